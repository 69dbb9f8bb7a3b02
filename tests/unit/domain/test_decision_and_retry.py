from __future__ import annotations

from datetime import timedelta

from chatbuffer.domain import decision
from chatbuffer.domain.model import HandOff, ModelDecision, SendReply, StaySilent
from chatbuffer.domain.retry import RetryPolicy, parse_retry_after, retryable_status


def answer(should: bool = True, content: str = "Hello!", confidence: float = 0.9) -> ModelDecision:
    return ModelDecision(
        should_respond=should, content=content, confidence=confidence, intent="greeting"
    )


def test_confident_answer_is_sent() -> None:
    assert decision.route(answer(), quality_threshold=0.7) == SendReply("Hello!")


def test_threshold_is_inclusive() -> None:
    assert decision.route(answer(confidence=0.7), quality_threshold=0.7) == SendReply("Hello!")


def test_unsure_answer_goes_to_a_human_with_draft_and_reason() -> None:
    outcome = decision.route(answer(confidence=0.4), quality_threshold=0.7)
    assert isinstance(outcome, HandOff)
    assert outcome.draft == "Hello!"
    assert "0.40 is below the threshold 0.70" in outcome.reason
    note = decision.handoff_note(outcome)
    assert "Hello!" in note and "0.40" in note


def test_model_may_choose_silence() -> None:
    assert isinstance(decision.route(answer(should=False), quality_threshold=0.7), StaySilent)


def test_blank_reply_is_not_sent() -> None:
    assert isinstance(decision.route(answer(content="  "), quality_threshold=0.7), HandOff)


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(
        max_attempts=5, base_delay=timedelta(seconds=2), max_delay=timedelta(seconds=20)
    )
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 16, 20]
    assert policy.delay(1, retry_after=7).total_seconds() == 7
    assert policy.delay(1, retry_after=3600).total_seconds() == 20
    assert not policy.gives_up(4, retryable=True)
    assert policy.gives_up(5, retryable=True)
    assert policy.gives_up(1, retryable=False)


def test_retry_after_header_parsing() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None


def test_which_http_answers_are_worth_another_try() -> None:
    assert [s for s in (400, 401, 403, 404, 408, 409, 422, 425, 429) if retryable_status(s)] == [
        408,
        409,
        425,
        429,
    ]
    assert all(retryable_status(s) for s in (500, 502, 503, 504))
