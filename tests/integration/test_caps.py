"""The caps hold: a contact who never pauses is answered within the age cap plus one model call,
and replaying an old failed burst never answers it after a newer one.

A fake clock drives a contact writing every second while the model takes two: messages that
arrive while a reply is written go to the next buffer, a buffer closed by a cap is answered with
its own messages, and a buffer closed by quiet folds into the newer one only while its oldest
message is within the cap (the newer buffer inherits that age).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, ModelDecision
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.flags import CachedControls
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import message_buffer
from chatbuffer.testing import FakeClock, MemoryControls, RecordingChatwoot, RecordingObserver
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from tests.integration.test_store import message

KEY = ConversationKey(1, 42)
LEASE = timedelta(seconds=60)
MODEL_S = 2


class Contact:
    """A contact writing at given seconds, a model taking ``MODEL_S`` seconds, one worker."""

    def __init__(self, store: SqlBufferStore, policy: BufferPolicy, seconds: list[int]) -> None:
        self.store = store
        self.policy = policy
        self.clock = FakeClock()
        self.start = self.clock.now()
        self.pending = sorted(seconds)
        self.sent_at = {f"m{t}": self.start + timedelta(seconds=t) for t in seconds}
        self.posted_at: list[datetime] = []
        self.chatwoot = RecordingChatwoot(while_posting=self._posting)
        self.pipeline = Pipeline(
            history=store,
            ledger=store,
            flags=CachedControls(MemoryControls(), self.clock),
            chatwoot=self.chatwoot,
            model=self,
            clock=self.clock,
            observer=RecordingObserver(),
            config=PipelineConfig(
                quality_threshold=0.5,
                typing_enabled=False,
                history_limit=0,
                retry=RetryPolicy(max_attempts=3),
                policy=policy,
            ),
        )

    async def _posting(self) -> None:
        self.posted_at.append(self.clock.now())

    async def deliver(self) -> None:
        """Everything the contact has written by now reaches the store, in order."""
        while self.pending and self.start + timedelta(seconds=self.pending[0]) <= self.clock.now():
            t = self.pending.pop(0)
            at = self.start + timedelta(seconds=t)
            await self.store.record_incoming(message(t + 1, KEY, f"m{t}"), self.policy, at)

    async def decide(self, prompt: Prompt) -> ModelDecision:
        # The contact keeps writing while the model writes.
        for _ in range(MODEL_S):
            self.clock.advance(1)
            await self.deliver()
        lines = [line[2:] for line in prompt.user.splitlines() if line.startswith("- m")]
        return ModelDecision(
            should_respond=True, content=" ".join(lines), confidence=0.9, intent="chat"
        )

    async def run(self, until_s: int) -> dict[str, timedelta]:
        """Run to ``until_s``; how long each message waited for the reply that answered it."""
        while self.clock.now() < self.start + timedelta(seconds=until_s):
            await self.deliver()
            jobs = await self.store.claim_due(self.clock.now(), "w1", LEASE, 10)
            for job in jobs:
                await self.pipeline.process(job, "w1")
            if not jobs:
                self.clock.advance(1)
        waited: dict[str, timedelta] = {}
        for reply, at in zip(self.chatwoot.sent, self.posted_at, strict=True):
            for name in reply.content.split():
                assert name not in waited, f"{name} answered twice"
                waited[name] = at - self.sent_at[name]
        assert sorted(waited) == sorted(self.sent_at), "every message is answered"
        return waited


@pytest.mark.parametrize(
    ("cap_s", "seconds"),
    [
        # The case: the age cap closes every buffer while the contact keeps typing.
        (4, list(range(17))),
        # A buffer closed by quiet (a pause at 2-3 s) goes stale and folds into the next one,
        # which then closes by the cap of the oldest message it holds, not of its own first.
        (10, [0, 1, *range(4, 17)]),
    ],
    ids=["age-cap", "fold-then-cap"],
)
async def test_a_contact_who_never_pauses_is_answered_within_the_cap_plus_one_model_call(
    store: SqlBufferStore, cap_s: int, seconds: list[int]
) -> None:
    policy = BufferPolicy(timedelta(seconds=2), timedelta(seconds=cap_s), 50)
    contact = Contact(store, policy, seconds)
    waited = await contact.run(until_s=40)
    longest = max(waited.values())
    assert longest <= timedelta(seconds=cap_s + MODEL_S), waited
    # The first reply came within the same bound of the first message.
    assert contact.posted_at[0] - contact.start <= timedelta(seconds=cap_s + MODEL_S)


async def test_a_buffer_closed_by_the_size_cap_is_answered_with_its_own_messages(
    store: SqlBufferStore,
) -> None:
    policy = BufferPolicy(timedelta(seconds=2), timedelta(seconds=60), 3)
    contact = Contact(store, policy, list(range(8)))
    waited = await contact.run(until_s=30)
    first = contact.chatwoot.sent[0].content.split()
    assert first == ["m0", "m1", "m2"], waited
    async with store.engine.connect() as conn:
        statuses = (await conn.execute(select(message_buffer.c.status))).scalars().all()
    assert "superseded" not in statuses


async def _failed_then_newer(store: SqlBufferStore, clock: FakeClock):
    """An older buffer that failed for good, and a newer buffer of the same conversation."""
    policy = BufferPolicy(timedelta(seconds=30), timedelta(seconds=300), 50)
    await store.record_incoming(message(1, KEY, "old"), policy, clock.now())
    clock.advance(31)
    [old] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    assert await store.fail(old, "w1", "the model answered 400", clock.now())
    clock.advance(60)
    await store.record_incoming(message(2, KEY, "new"), policy, clock.now())
    clock.advance(31)
    return old


async def test_a_replay_after_a_newer_burst_was_answered_is_refused(
    store: SqlBufferStore,
) -> None:
    clock = FakeClock()
    old = await _failed_then_newer(store, clock)
    [new] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    # While the newer burst is being answered, and once it was, the old one stays failed.
    assert (await store.replay(old.buffer_id, clock.now()))[0] == "out_of_order"
    assert await store.complete(new, "w1", clock.now(), "replied")
    result, summary = await store.replay(old.buffer_id, clock.now())
    assert result == "out_of_order"
    assert summary is not None and summary.status == "failed"
    clock.advance(60)
    assert await store.claim_due(clock.now(), "w1", LEASE, 10) == []


async def test_a_replayed_buffer_is_answered_before_the_newer_one_waiting(
    store: SqlBufferStore,
) -> None:
    clock = FakeClock()
    old = await _failed_then_newer(store, clock)
    assert (await store.replay(old.buffer_id, clock.now()))[0] == "scheduled"
    # The newer buffer is due too, but waits for the older one of its conversation.
    [first] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    assert first.buffer_id == old.buffer_id
    assert await store.claim_due(clock.now(), "w2", LEASE, 10) == []
