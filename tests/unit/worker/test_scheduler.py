"""The worker loop on the in-memory store: every wait is on the fake clock, so these tests say
to the millisecond when a buffer is answered, and never sleep."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from chatbuffer.domain.model import ConversationKey
from chatbuffer.errors import ModelError
from tests.unit.worker.world import LEASE, QUIET, REPLY, World, answer, burst_lines, settle

MS = timedelta(milliseconds=1)

#: Whether the worker looks again as each buffer ends (SQLite) or relies on the store's wake-ups
#: for what an end releases (PostgreSQL's NOTIFY; MemoryStore's listeners hear the same).
ON_FINISH = pytest.mark.parametrize("wake_on_finish", [True, False], ids=["poke", "notify"])


@ON_FINISH
async def test_a_burst_is_answered_once_exactly_when_it_falls_due(wake_on_finish: bool) -> None:
    w = World(wake_on_finish=wake_on_finish)
    async with w.running():
        await w.say("hi", "I ordered last week", "order 4411")
        await settle()
        w.clock.advance(QUIET - MS)
        await settle()
        assert w.chatwoot.sent == []
        w.clock.advance(MS)
        await settle()
        [sent] = w.chatwoot.sent
        assert sent.content == REPLY
        [prompt] = w.model.prompts
        assert burst_lines(prompt) == ["hi", "I ordered last week", "order 4411"]
        w.clock.advance(timedelta(minutes=5))
        await settle()
        assert len(w.chatwoot.sent) == 1
    assert w.statuses() == ["completed"]


@ON_FINISH
async def test_a_failed_attempt_is_retried_when_its_back_off_ends(wake_on_finish: bool) -> None:
    w = World(wake_on_finish=wake_on_finish)
    w.model.answers = [ModelError("the model did not answer in time"), answer()]
    async with w.running():
        await w.say("hello?")
        await w.due()
        assert len(w.model.prompts) == 1 and w.chatwoot.sent == []
        w.clock.advance(timedelta(seconds=2) - MS)
        await settle()
        assert len(w.model.prompts) == 1
        w.clock.advance(MS)
        await settle()
        [sent] = w.chatwoot.sent
        assert sent.content == REPLY
    [job] = w.store.jobs.values()
    assert (job.status, job.attempts) == ("completed", 2)


@ON_FINISH
async def test_a_newer_burst_waits_for_the_older_and_both_are_answered_once(
    wake_on_finish: bool,
) -> None:
    w = World(wake_on_finish=wake_on_finish)
    w.model.hold()
    async with w.running():
        await w.say("hi")
        await w.due()
        await w.say("where is my order?")  # while the first reply is being written
        await w.due()
        assert len(w.model.prompts) == 1  # the newer buffer waits for the older one
        w.model.release()
        await settle()
        # The stale reply was dropped and the whole burst answered at once.
        [sent] = w.chatwoot.sent
        assert sent.content == REPLY
        assert burst_lines(w.model.prompts[-1]) == ["hi", "where is my order?"]
    assert w.statuses() == ["superseded", "completed"]


async def test_heartbeats_keep_the_lease_while_the_model_is_slow() -> None:
    w = World()
    w.model.hold()
    async with w.running():
        await w.say("hi")
        await w.due()
        for _ in range(10):  # many leases' worth of model time, in heartbeat-sized steps
            w.clock.advance(LEASE / 3)
            await settle()
            assert await w.store.claim_due(w.clock.now(), "w2", LEASE, 10) == []
        [job] = w.store.jobs.values()
        assert job.attempts == 1  # nobody, not even this worker, took it over
        w.model.release()
        await settle()
        assert len(w.chatwoot.sent) == 1


async def test_a_worker_that_lost_its_lease_stops_its_heartbeat_and_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World()
    w.model.hold()
    async with w.running():
        await w.say("hi")
        await w.due()
        # The worker stalls past its lease (no heartbeat ran); another one takes the buffer
        # before the stalled one wakes up.
        w.clock.advance(LEASE + MS)
        [taken] = await w.store.claim_due(w.clock.now(), "w2", LEASE, 10)
        with caplog.at_level(logging.WARNING, "chatbuffer.worker"):
            await settle()
        assert any("lost the lease" in r.getMessage() for r in caplog.records)
        [job] = w.store.jobs.values()
        assert job.lease_owner == "w2" and job.lease_expires_at == w.clock.now() + LEASE
        w.model.release()
        await settle()
        assert w.chatwoot.sent == []
        await w.pipeline.process(taken, "w2")
    assert len(w.chatwoot.sent) == 1
    assert w.statuses() == ["completed"]


async def test_shutdown_waits_out_the_grace_period_then_hands_the_buffer_back() -> None:
    w = World()
    w.model.hold()
    async with w.running() as worker:
        await w.say("hi")
        await w.due()
        worker.stop()
        await settle()
        w.clock.advance(timedelta(seconds=20) - MS)
        await settle()
        assert not worker.task.done()
        w.clock.advance(MS)
        await settle()
        assert worker.task.done()
    [job] = w.store.jobs.values()
    assert (job.status, job.attempts, job.scheduled_for) == ("scheduled", 1, w.clock.now())
    assert job.error_message == "the worker shut down before finishing"
    assert w.chatwoot.sent == [] and w.chatwoot.typing[-1][1] is False
    # Another worker answers it at once, without waiting for a lease to run out.
    w.model.release()
    async with w.running("w2"):
        await settle()
        assert len(w.chatwoot.sent) == 1
    assert w.statuses() == ["completed"]


@ON_FINISH
async def test_a_full_worker_takes_the_next_buffer_when_a_slot_frees(wake_on_finish: bool) -> None:
    w = World(wake_on_finish=wake_on_finish, concurrency=1)
    w.model.hold()
    async with w.running():
        for conversation in (1, 2):
            await w.say("hi", key=ConversationKey(3, conversation))
        await w.due()
        assert len(w.model.prompts) == 1
        w.model.release()
        await settle()
        assert len(w.chatwoot.sent) == 2
