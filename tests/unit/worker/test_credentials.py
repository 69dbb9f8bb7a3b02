"""A token Chatwoot refuses, or a key the model endpoint refuses, pauses the model calls whose
answers could not be delivered (``worker.credentials``), on the fake clock."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from chatbuffer.domain import marker as markers
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError, ModelError
from chatbuffer.flags import CachedControls
from chatbuffer.observability.metrics import Metrics
from chatbuffer.testing import FakeClock, MemoryControls, RecordingChatwoot
from chatbuffer.worker.credentials import (
    AccountScopedPipeline,
    CredentialGuard,
    GuardedChatwoot,
    GuardedReplyModel,
)
from chatbuffer.worker.pipeline import PipelineConfig
from tests.unit.worker.world import KEY, POLICY, QUIET, REPLY, World, answer

BACKOFF = timedelta(minutes=5)
OTHER_ACCOUNT = ConversationKey(KEY.account_id + 1, 5)
SAME_ACCOUNT = ConversationKey(KEY.account_id, KEY.conversation_id + 1)
REFUSALS = "chatbuffer.worker.credentials"


@dataclass
class RefusingChatwoot(RecordingChatwoot):
    """Chatwoot answering 401 to every call made for the accounts in ``refused``; with
    ``bots_may_type`` off, to every typing call (Chatwoot before about 4.12, to a good token)."""

    refused: set[int] = field(default_factory=set)
    bots_may_type: bool = True

    def _gate(self, key: ConversationKey) -> None:
        if key.account_id in self.refused:
            raise ChatwootError("Chatwoot answered 401", retryable=False, status=401)

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        self._gate(key)
        if not self.bots_may_type:
            raise ChatwootError("Chatwoot answered 401", retryable=False, status=401)
        await super().set_typing(key, on=on)

    async def send_message(self, key: ConversationKey, content: str, **kw: Any) -> int:
        self._gate(key)
        return await super().send_message(key, content, **kw)

    async def set_status(self, key: ConversationKey, status: str) -> None:
        self._gate(key)
        await super().set_status(key, status)

    async def find_marked(
        self, key: ConversationKey, marker: markers.Marker, *, after_message_id: int | None
    ) -> int | None:
        self._gate(key)
        return await super().find_marked(key, marker, after_message_id=after_message_id)


def guarded(w: World, *, typing: bool) -> RefusingChatwoot:
    """Rewire ``w``'s pipeline as ``app.Runtime`` does: through one guard."""
    chatwoot = RefusingChatwoot()
    w.chatwoot = chatwoot
    guard = CredentialGuard(w.clock, backoff=BACKOFF)
    w.pipeline = AccountScopedPipeline(
        history=w.store,
        ledger=w.store,
        flags=CachedControls(MemoryControls(), w.clock),
        chatwoot=GuardedChatwoot(chatwoot, guard),
        model=GuardedReplyModel(w.model, guard),
        clock=w.clock,
        observer=w.observer,
        config=PipelineConfig(
            quality_threshold=0.7,
            typing_enabled=typing,
            history_limit=10,
            retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
            policy=POLICY,
        ),
    )
    return chatwoot


async def burst(w: World, key: ConversationKey, text: str) -> None:
    """``key``'s contact writes ``text`` and falls quiet; one worker pass answers what is due."""
    await w.say(text, key=key)
    w.clock.advance(QUIET)
    for job in await w.store.claim_due(w.clock.now(), "w1", timedelta(seconds=10), 10):
        await w.pipeline.process(job, "w1")


def job_of(w: World, key: ConversationKey) -> Any:
    [job] = [j for j in w.store.jobs.values() if j.key == key]
    return job


async def test_a_refused_chatwoot_token_stops_model_calls_for_that_account_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World()
    chatwoot = guarded(w, typing=False)
    chatwoot.refused = {KEY.account_id}
    caplog.set_level(logging.ERROR, logger=REFUSALS)

    # Asked once: the answer is written, then Chatwoot refuses to take it.
    await burst(w, KEY, "where is my order?")
    assert len(w.model.prompts) == 1
    assert chatwoot.sent == []

    # The account's next burst: not worth a model call; put back until the pause ends.
    await burst(w, SAME_ACCOUNT, "hello again")
    assert len(w.model.prompts) == 1
    job = job_of(w, SAME_ACCOUNT)
    assert (job.status, job.attempts) == ("scheduled", 1)
    assert "paused" in job.error_message
    assert job.scheduled_for > w.clock.now() + timedelta(seconds=2)

    # Another account's Chatwoot calls work: its bursts are answered as usual.
    await burst(w, OTHER_ACCOUNT, "a different business")
    assert len(w.model.prompts) == 2
    assert [s.key for s in chatwoot.sent] == [OTHER_ACCOUNT]

    # One error for the refusal, not one per call.
    refusals = [r for r in caplog.records if "answered 401" in r.getMessage()]
    assert len(refusals) == 1
    assert "account 3 " in refusals[0].getMessage()
    assert "CHATWOOT_API_TOKEN" in refusals[0].getMessage()

    # The operator fixes the token; after the pause the buffer is asked again and answered.
    chatwoot.refused.clear()
    w.clock.advance(BACKOFF)
    for due in await w.store.claim_due(w.clock.now(), "w1", timedelta(seconds=10), 10):
        await w.pipeline.process(due, "w1")
    assert len(w.model.prompts) == 3
    assert [(s.key, s.content) for s in chatwoot.sent][-1] == (SAME_ACCOUNT, REPLY)
    assert job.status == "completed"


async def test_a_refused_token_pauses_even_with_typing_on_and_a_typing_refusal_alone_does_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World()
    chatwoot = guarded(w, typing=True)
    caplog.set_level(logging.ERROR, logger=REFUSALS)
    # A Chatwoot that refuses bots the typing indicator, to a good token: answers go on.
    chatwoot.bots_may_type = False
    await burst(w, KEY, "hi")
    await burst(w, SAME_ACCOUNT, "hello")
    assert len(w.model.prompts) == 2
    assert [s.key for s in chatwoot.sent] == [KEY, SAME_ACCOUNT]
    assert caplog.records == []

    # The token revoked: typing and the post refused; the next burst is not asked.
    chatwoot.bots_may_type = True
    chatwoot.refused = {KEY.account_id}
    await burst(w, ConversationKey(KEY.account_id, 500), "one")
    await burst(w, ConversationKey(KEY.account_id, 501), "two")
    assert len(w.model.prompts) == 3
    assert len(chatwoot.sent) == 2


async def test_a_refused_model_key_pauses_every_account_and_logs_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World()
    guarded(w, typing=False)
    caplog.set_level(logging.ERROR, logger=REFUSALS)
    w.model.answers = [
        ModelError("the model endpoint answered 401", retryable=False, status=401),
        answer(),
    ]
    await burst(w, KEY, "first")
    assert len(w.model.prompts) == 1

    # Thirty seconds on (each burst's quiet period): spared, and not logged again.
    await burst(w, OTHER_ACCOUNT, "second")
    assert len(w.model.prompts) == 1
    assert len([r for r in caplog.records if "answered 401" in r.getMessage()]) == 1

    # A minute on, still paused: one more line, counting the calls it spared.
    await burst(w, SAME_ACCOUNT, "third")
    lines = [r.getMessage() for r in caplog.records if "answered 401" in r.getMessage()]
    assert len(lines) == 2
    assert "model calls for every account" in lines[1]
    assert "(2 skipped since the last report)" in lines[1]
    assert "OPENAI_API_KEY" in lines[1]
    assert len(w.model.prompts) == 1


def test_every_refusal_is_counted_by_service_even_with_the_pause_off() -> None:
    clock = FakeClock()
    metrics = Metrics(clock)
    counted = metrics.credential_refused

    def sample(service: str) -> float:
        value = metrics.registry.get_sample_value(
            "chatbuffer_credential_refused_total", {"service": service}
        )
        return value or 0.0

    for backoff in (BACKOFF, timedelta(0)):
        guard = CredentialGuard(
            clock,
            backoff=backoff,
            on_refused=lambda source: counted.labels(
                service="chatwoot" if source == "Chatwoot" else "model"
            ).inc(),
        )
        guard.refused("Chatwoot", 401, 1)
        guard.refused("Chatwoot", 401, 1)
        guard.refused("the model endpoint", 403, None)
    assert (sample("chatwoot"), sample("model")) == (4.0, 2.0)
