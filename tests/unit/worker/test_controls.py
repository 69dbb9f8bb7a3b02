"""The kill switch, stale bursts after a resume, and shadow mode, on the in-memory store and the
fake clock: the worker's wrappers around its ports, wired as ``app.py`` wires them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from chatbuffer.domain import control
from chatbuffer.domain.control import Subject
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.domain.shadow import is_shadow
from chatbuffer.flags import CONTROLS_TTL, CachedControls
from chatbuffer.testing import MemoryControls
from chatbuffer.worker.controls import ControlledChatwoot, PausableQueue, StaleBursts
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from tests.unit.worker.world import KEY, LEASE, POLICY, QUIET, REPLY, World, settle

STALE_AFTER = timedelta(minutes=10)


class Subjects:
    async def subject(self, key: ConversationKey) -> Subject:
        return Subject(key, inbox_id=4, contact_id=9)


class Controlled(World):
    """The unit world with the live controls between the worker and its ports."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = MemoryControls()
        self.controls = CachedControls(self.rows, self.clock)
        self.queue = PausableQueue(self.store, self.controls)
        self.pipeline = Pipeline(
            history=self.store,
            ledger=self.store,
            flags=self.controls,
            chatwoot=ControlledChatwoot(self.chatwoot, self.controls, Subjects()),
            model=self.model,
            clock=self.clock,
            observer=self.observer,
            stale=StaleBursts(self.controls, STALE_AFTER),
            config=PipelineConfig(
                quality_threshold=0.7,
                typing_enabled=True,
                history_limit=10,
                retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
                policy=POLICY,
            ),
        )

    async def set(self, values: dict[str, str | None]) -> None:
        """An operator's change, then past the refresh: this process has read it."""
        await self.rows.set_values(values)
        self.clock.advance(CONTROLS_TTL + timedelta(seconds=1))

    async def pause(self) -> None:
        await self.set(control.pause_values("ops", self.clock.now()))

    async def resume(self) -> None:
        await self.set(control.resume_values("ops", self.clock.now()))

    async def work(self) -> int:
        """Claim and process what is due through the pausable queue; how many were claimed."""
        jobs = await self.queue.claim_due(self.clock.now(), "w1", LEASE, 10)
        for job in jobs:
            await self.pipeline.process(job, "w1")
        return len(jobs)


async def test_paused_nothing_is_claimed_the_burst_waits_and_is_answered_after_the_resume() -> None:
    w = Controlled()
    await w.pause()
    await w.say("hi", "where is my order")
    w.clock.advance(QUIET)
    assert await w.work() == 0
    assert await w.queue.next_wake_at(w.clock.now()) == w.clock.now() + timedelta(seconds=1)
    assert (w.chatwoot.sent, w.chatwoot.typing, w.model.prompts) == ([], [], [])
    assert len(w.store.messages) == 2
    await w.resume()
    assert await w.work() == 1
    [sent] = w.chatwoot.sent
    assert (sent.content, sent.private) == (REPLY, False)
    assert w.statuses() == ["completed"]


async def test_a_pause_while_the_model_writes_sends_nothing_and_the_reply_follows_resume() -> None:
    w = Controlled()
    await w.say("hi")
    w.clock.advance(QUIET)
    w.model.hold()
    [job] = await w.queue.claim_due(w.clock.now(), "w1", LEASE, 10)
    writing = asyncio.create_task(w.pipeline.process(job, "w1"))
    await settle()
    await w.pause()
    w.model.release()
    await writing
    # Typing went on before the pause and may go off; nothing else reached Chatwoot.
    assert w.chatwoot.sent == [] and w.chatwoot.statuses == []
    assert w.chatwoot.typing == [(KEY, True), (KEY, False)]
    assert w.statuses() == ["closed"]
    w.clock.advance(timedelta(minutes=1))
    assert await w.work() == 0
    await w.resume()
    assert await w.work() == 1
    [sent] = w.chatwoot.sent
    assert sent.content == REPLY
    # The reply the model wrote before the pause is the one sent: not asked again.
    assert len(w.model.prompts) == 1


async def test_after_the_resume_a_stale_burst_goes_to_a_human_and_a_fresh_one_is_answered() -> None:
    w = Controlled()
    stale, fresh = ConversationKey(3, 1), ConversationKey(3, 2)
    await w.pause()
    await w.say("are you there?", key=stale)
    w.clock.advance(STALE_AFTER)
    await w.say("hello", key=fresh)
    w.clock.advance(QUIET)
    assert await w.work() == 0
    await w.resume()
    assert await w.work() == 2
    by_key = {s.key: s for s in w.chatwoot.sent}
    assert len(w.chatwoot.sent) == 2
    note, reply = by_key[stale], by_key[fresh]
    assert note.private and "paused" in note.content
    assert (reply.content, reply.private) == (REPLY, False)
    assert w.chatwoot.statuses == [(stale, "open")]
    # One model call: the fresh burst's.
    assert len(w.model.prompts) == 1
    assert "handed off: stale after a pause" in {b.outcome for b in w.store.buffers.values()}


async def test_a_burst_due_after_the_resume_is_answered_however_old_its_messages() -> None:
    w = Controlled()
    await w.pause()
    await w.resume()
    await w.say("old message, replayed later")
    w.clock.advance(STALE_AFTER * 2)
    assert await w.work() == 1
    [sent] = w.chatwoot.sent
    assert (sent.content, sent.private) == (REPLY, False)


async def test_shadow_mode_asks_the_model_records_the_reply_and_sends_nothing() -> None:
    w = Controlled()
    await w.set({control.ROLLOUT_SHADOW: "on"})
    await w.say("hi", "order 4411")
    w.clock.advance(QUIET)
    assert await w.work() == 1
    assert (w.chatwoot.sent, w.chatwoot.typing, w.chatwoot.statuses) == ([], [], [])
    assert len(w.model.prompts) == 1
    [reply] = w.store.replies
    assert reply.content == REPLY and is_shadow(reply.chatwoot_message_id)
    assert w.statuses() == ["completed"]


async def test_shadow_mode_covers_only_the_buffered_path() -> None:
    w = Controlled()
    # The subject's bucket is out of a 0 % rollout: the immediate path, answered as always.
    await w.set({control.ROLLOUT_SHADOW: "on", control.ROLLOUT_PERCENT: "0"})
    await w.say("hi")
    w.clock.advance(QUIET)
    assert await w.work() == 1
    [sent] = w.chatwoot.sent
    assert not is_shadow(sent.message_id)
    # A canary is buffered, so shadowed.
    await w.set({"rollout.canary.inbox:4": "on"})
    await w.say("again", key=ConversationKey(3, 5))
    w.clock.advance(QUIET)
    assert await w.work() == 1
    assert len(w.chatwoot.sent) == 1
