"""Fenced leases: one clock for every lease and due time, heartbeats that never queue behind the
pool, no POST without enough lease left to finish it, and a lost lease ends the model call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from chatbuffer.app import Runtime
from chatbuffer.clock import SystemClock
from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, ModelDecision
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.flags import CachedControls
from chatbuffer.settings import load_settings
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.testing import FakeClock, MemoryControls, RecordingChatwoot, RecordingObserver
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from chatbuffer.worker.scheduler import Scheduler, SchedulerConfig
from chatbuffer.worker.waker import Waker
from tests.conftest import _empty_postgres
from tests.integration.test_store import KEY, message

POLICY = BufferPolicy(timedelta(seconds=30), timedelta(seconds=300), 50)
LEASE = timedelta(seconds=10)
HOLD = timedelta(seconds=15)
ANSWER = ModelDecision(should_respond=True, content="On its way.", confidence=0.9, intent="x")


def config(policy: BufferPolicy = POLICY) -> PipelineConfig:
    return PipelineConfig(
        quality_threshold=0.5,
        typing_enabled=True,
        history_limit=0,
        retry=RetryPolicy(max_attempts=3),
        policy=policy,
        send_hold=HOLD,
    )


def _pipeline(
    store: SqlBufferStore, clock: FakeClock, chatwoot: RecordingChatwoot, model: Any
) -> Pipeline:
    return Pipeline(
        history=store,
        ledger=store,
        flags=CachedControls(MemoryControls(), clock),
        chatwoot=chatwoot,
        model=model,
        clock=clock,
        observer=RecordingObserver(),
        config=config(),
    )


@pytest.fixture
async def db_clock_store(postgres_url: str) -> AsyncIterator[SqlBufferStore]:
    """A PostgreSQL store as production runs it: leases and due times on the database's clock."""
    _empty_postgres(postgres_url)
    engine = database.create_engine(postgres_url, pool_size=4)
    try:
        yield SqlBufferStore(engine)
    finally:
        await engine.dispose()


async def lease_expiry(store: SqlBufferStore) -> datetime:
    """When the running job's lease runs out."""
    async with store.engine.connect() as conn:
        [expires] = (
            await conn.execute(select(jobs.c.lease_expires_at).where(jobs.c.status == "running"))
        ).scalars()
    return expires


# -- (a) one clock ------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease(
    db_clock_store: SqlBufferStore,
) -> None:
    store = db_clock_store
    now = SystemClock().now()
    ahead = FakeClock(now + timedelta(hours=1))
    # One buffer due a minute ago, one due in a minute (by the database's clock).
    await store.record_incoming(message(1), POLICY, now - timedelta(seconds=90))
    await store.record_incoming(message(2, ConversationKey(1, 43)), POLICY, now)
    [held] = await store.claim_due(now, "w1", LEASE, 10)
    assert held.key == KEY
    # An hour ahead, both the lease and the second buffer's due time look long past to this
    # worker's clock; the database's clock says neither is.
    assert await store.claim_due(ahead.now(), "skewed", LEASE, 10) == []
    # It sleeps until the real next wake-up, measured from its own clock (no busy loop).
    wake = await store.next_wake_at(ahead.now())
    assert wake is not None
    assert timedelta(seconds=5) < wake - ahead.now() <= LEASE
    # Its heartbeat cannot take the lease either, and the holder still has it.
    assert await store.heartbeat("skewed", [held], LEASE, ahead.now()) == set()
    assert await store.heartbeat("w1", [held], LEASE, now) == {held.job_id}


@pytest.mark.postgres
async def test_a_worker_whose_clock_runs_behind_still_takes_over_an_expired_lease(
    db_clock_store: SqlBufferStore,
) -> None:
    store = db_clock_store
    now = SystemClock().now()
    behind = FakeClock(now - timedelta(hours=1))
    await store.record_incoming(message(1), POLICY, now - timedelta(seconds=90))
    # A lease of zero has run out by the next statement, whatever the workers' clocks say.
    [dead] = await store.claim_due(now, "dead", timedelta(0), 10)
    [taken] = await store.claim_due(behind.now(), "alive", LEASE, 10)
    assert taken.buffer_id == dead.buffer_id and taken.attempts == 2


# -- (b) heartbeats on their own connection ----------------------------------------------------


@pytest.mark.postgres
async def test_heartbeats_do_not_wait_for_the_pool(postgres_url: str) -> None:
    _empty_postgres(postgres_url)
    clock = FakeClock()
    runtime = Runtime(load_settings(database_url=postgres_url, database_pool_size=1), clock=clock)
    async with runtime.opened():
        store = runtime.store
        await store.record_incoming(message(1), POLICY, clock.now())
        clock.advance(31)
        [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
        # Every pooled connection is busy (buffers being answered, webhooks)...
        async with store.engine.connect() as busy:
            await busy.execute(select(1))
            # ...and the heartbeat still gets through at once.
            kept = await asyncio.wait_for(
                store.heartbeat("w1", [job], LEASE, clock.now()), timeout=5
            )
    assert kept == {job.job_id}


async def test_one_heartbeat_renews_every_lease_held_and_names_the_lost_ones(store) -> None:
    clock = FakeClock()
    keys = [ConversationKey(1, c) for c in (1, 2, 3)]
    for n, key in enumerate(keys, start=1):
        await store.record_incoming(message(n, key), POLICY, clock.now())
    clock.advance(31)
    kept, taken, cancelled = await store.claim_due(clock.now(), "w1", LEASE, 10)
    assert await store.cancel_open(cancelled.key, clock.now(), "a human agent answered") == 1
    clock.advance(LEASE)
    await store.heartbeat("w1", [kept, cancelled], LEASE, clock.now())
    [thief] = await store.claim_due(clock.now() + timedelta(milliseconds=1), "w2", LEASE, 10)
    assert thief.job_id == taken.job_id
    held = await store.heartbeat("w1", [kept, taken, cancelled], LEASE, clock.now())
    assert held == {kept.job_id}


# -- (c) no POST without enough lease left ------------------------------------------------------


async def test_the_lease_outlasts_the_post_even_when_it_is_shorter(store) -> None:
    clock = FakeClock()
    left_at_post: list[timedelta] = []

    async def note_lease_left() -> None:
        left_at_post.append(await lease_expiry(store) - clock.now())

    chatwoot = RecordingChatwoot(while_posting=note_lease_left)

    async def slow(prompt: Prompt) -> ModelDecision:
        clock.advance(1.9)  # most of the 2 s lease is gone by the time the model answers
        return ANSWER

    pipeline = _pipeline(store, clock, chatwoot, _Model(slow))
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(31)
    [job] = await store.claim_due(clock.now(), "w1", timedelta(seconds=2), 10)
    await pipeline.process(job, "w1")
    assert [s.content for s in chatwoot.sent] == ["On its way."]
    # The Chatwoot timeout plus the margin (HOLD), not the 0.1 s the lease had left.
    assert left_at_post == [HOLD]


async def test_a_reserved_send_is_not_shortened_by_a_heartbeat(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(31)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    intent = PostedMessage("reply", "On its way.")
    assert await store.reserve_send(job, "w1", intent, clock.now(), hold=HOLD) == "send"
    assert await store.heartbeat("w1", [job], LEASE, clock.now()) == {job.job_id}
    assert await lease_expiry(store) == clock.now() + HOLD


async def test_no_other_worker_takes_over_while_a_post_may_still_land(store) -> None:
    clock = FakeClock()
    chatwoot = RecordingChatwoot()
    pipeline = _pipeline(store, clock, chatwoot, _Model(lambda prompt: _answer()))
    overtaken: list[Any] = []

    async def second_worker() -> None:
        # While the first POST is on its way (slower than the lease, within Chatwoot's timeout,
        # which is under HOLD), another worker looks for due buffers.
        chatwoot.while_posting = None
        clock.advance(LEASE + timedelta(seconds=1))
        taken = await store.claim_due(clock.now(), "w2", LEASE, 10)
        overtaken.extend(taken)
        for job in taken:
            # It would find the intent without an id, no marked message yet, and post again.
            await pipeline.process(job, "w2")

    chatwoot.while_posting = second_worker
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(31)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    await pipeline.process(job, "w1")
    assert overtaken == []
    assert [s.content for s in chatwoot.sent] == ["On its way."]


# -- (d) a lost lease ends the model call -------------------------------------------------------


class _Model:
    def __init__(self, decide: Any) -> None:
        self.decide = decide


async def _answer() -> ModelDecision:
    return ANSWER


@dataclass
class StallingModel:
    """A model that never answers on its own; notes whether its call was abandoned."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)

    async def decide(self, prompt: Prompt) -> ModelDecision:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.abandoned.set()
            raise
        raise AssertionError("unreachable")


@pytest.mark.parametrize("how", ["taken-over", "human-took-over"])
async def test_a_worker_that_loses_its_lease_abandons_the_model_call(store, how: str) -> None:
    clock = FakeClock()
    chatwoot = RecordingChatwoot()
    model = StallingModel()
    pipeline = _pipeline(store, clock, chatwoot, model)
    waker = Waker(clock)
    scheduler = Scheduler(
        queue=store,
        pipeline=pipeline,
        clock=clock,
        waker=waker,
        config=SchedulerConfig(concurrency=4, lease=LEASE, sweep_interval=timedelta(seconds=10)),
        owner="w1",
    )
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(31)
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    try:
        await asyncio.wait_for(model.started.wait(), timeout=5)
        if how == "taken-over":
            later = clock.now() + LEASE + timedelta(milliseconds=1)
            [thief] = await store.claim_due(later, "w2", LEASE, 10)
        else:
            assert await store.cancel_open(KEY, clock.now(), "a human agent answered") == 1
        # The worker's next heartbeat (a third of the lease later) learns it lost the lease.
        clock.advance(LEASE / 3)
        await asyncio.wait_for(model.abandoned.wait(), timeout=5)
    finally:
        stop.set()
        waker.poke()
        await asyncio.wait_for(running, timeout=5)
    assert chatwoot.sent == []
    assert chatwoot.typing == [(KEY, True), (KEY, False)]
    async with store.engine.connect() as conn:
        [row] = (await conn.execute(select(jobs))).all()
    if how == "taken-over":
        # Left to the new holder as it was: the abandoning worker released nothing.
        assert (row.status, row.lease_owner, row.attempts) == ("running", "w2", thief.attempts)
    else:
        assert row.status == "cancelled"
