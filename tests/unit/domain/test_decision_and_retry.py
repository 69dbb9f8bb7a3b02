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


def handoff(content: str = "Someone will call you.", confidence: float = 0.9, should: bool = True):
    return ModelDecision(
        should_respond=should,
        content=content,
        confidence=confidence,
        intent="complaint",
        actions=("Handoff",),
    )


def test_a_handoff_action_with_a_confident_answer_replies_first() -> None:
    outcome = decision.route(handoff(), quality_threshold=0.7)
    assert outcome == HandOff(
        draft="",
        reason="the model asked for a human (intent: complaint)",
        reply="Someone will call you.",
    )
    note = decision.handoff_note(outcome, "hi / I want my money back")
    assert "The contact wrote: hi / I want my money back" in note
    assert "The bot replied first:\nSomeone will call you." in note


def test_a_handoff_action_with_an_unsure_or_no_answer_only_leaves_the_draft() -> None:
    unsure = decision.route(handoff(confidence=0.3), quality_threshold=0.7)
    assert isinstance(unsure, HandOff) and unsure.reply is None
    assert unsure.draft == "Someone will call you."
    silent = decision.route(handoff(should=False, content="x"), quality_threshold=0.7)
    assert isinstance(silent, HandOff) and silent.reply is None and silent.draft == ""
    blank = decision.route(handoff(content=" "), quality_threshold=0.7)
    assert isinstance(blank, HandOff) and blank.reply is None


def test_other_actions_change_nothing() -> None:
    tagged = ModelDecision(True, "Hello!", 0.9, "greeting", actions=("tag:vip",))
    assert decision.route(tagged, quality_threshold=0.7) == SendReply("Hello!")


def test_the_burst_summary_is_short_and_says_what_media_carried() -> None:
    from datetime import UTC, datetime

    from chatbuffer.domain.model import Attachment, ConversationKey, InboundMessage

    def said(content: str | None, *attachments: Attachment) -> InboundMessage:
        return InboundMessage(
            ConversationKey(1, 2),
            1,
            content,
            "text",
            "text",
            datetime(2026, 1, 1, tzinfo=UTC),
            attachments=attachments,
        )

    burst = [
        said("hi\n  there"),
        said(None, Attachment("audio", transcript="where is my order")),
        said("look", Attachment("image")),
    ]
    assert decision.burst_summary(burst) == (
        "hi there / [voice note: where is my order] / [image] look"
    )
    long = decision.burst_summary([said("x" * 500)], limit=50)
    assert len(long) == 50 and long.endswith("…")
