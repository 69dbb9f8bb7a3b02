"""One lock order everywhere: a human takeover racing the worker's own writes never deadlocks.

A hand-off sets the conversation ``open`` and then completes its buffer; Chatwoot's
``conversation_status_changed`` webhook for that change becomes a cancel that races the complete.
Every write that touches a conversation's buffers and jobs takes the conversation's row lock
first, so the two queue up instead of deadlocking, and the pause the cancel carries is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import ClaimedJob
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import buffer_processing_jobs, conversations, message_buffer
from chatbuffer.testing import FakeClock
from tests.conftest import _empty_postgres
from tests.integration.test_store import message

pytestmark = pytest.mark.postgres

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
LEASE = timedelta(seconds=10)
CONVERSATIONS = 12
ROUNDS = 12

Finish = Callable[[SqlBufferStore, ClaimedJob, FakeClock], Awaitable[bool]]


async def _complete(store: SqlBufferStore, job: ClaimedJob, clock: FakeClock) -> bool:
    return await store.complete(job, "w1", clock.now(), "handed off")


async def _fail(store: SqlBufferStore, job: ClaimedJob, clock: FakeClock) -> bool:
    return await store.fail(job, "w1", "gave up", clock.now())


async def _retry(store: SqlBufferStore, job: ClaimedJob, clock: FakeClock) -> bool:
    return await store.release_for_retry(job, "w1", "model timed out", clock.now())


#: What the worker's write leaves behind when it wins the race (the cancel then finds nothing
#: left to cancel, or, after a retry, cancels the buffer waiting for it).
WINNER = {"complete": "completed", "fail": "failed", "retry": "cancelled"}


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[SqlBufferStore]:
    _empty_postgres(postgres_url)
    # Every call below runs on a connection of its own.
    engine = database.create_engine(postgres_url, pool_size=2 * CONVERSATIONS)
    try:
        yield SqlBufferStore(engine, database_clock=False)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("name", "finish"), [("complete", _complete), ("fail", _fail), ("retry", _retry)]
)
async def test_cancel_racing_the_workers_write_neither_deadlocks_nor_loses_the_pause(
    pg_store: SqlBufferStore, name: str, finish: Finish
) -> None:
    store = pg_store
    clock = FakeClock()
    keys = [ConversationKey(9, c) for c in range(1, CONVERSATIONS + 1)]
    next_id = 0
    for _ in range(ROUNDS):
        clock.advance(3601)  # the previous round's pauses are over
        for key in keys:
            next_id += 1
            assert (await store.record_incoming(message(next_id, key), POLICY, clock.now())).stored
        clock.advance(31)
        jobs = await store.claim_due(clock.now(), "w1", LEASE, CONVERSATIONS)
        assert len(jobs) == CONVERSATIONS
        until = clock.now() + timedelta(hours=1)
        # asyncio.gather raises the first error: a deadlock would surface here.
        await asyncio.gather(
            *(
                coro
                for job in jobs
                for coro in (
                    store.cancel_open(job.key, clock.now(), "a human agent answered", until),
                    finish(store, job, clock),
                )
            )
        )
        async with store.engine.connect() as conn:
            paused = (
                await conn.execute(
                    select(conversations.c.chatwoot_conversation_id).where(
                        conversations.c.account_id == 9,
                        conversations.c.human_active_until == until,
                    )
                )
            ).scalars()
            assert sorted(paused) == [k.conversation_id for k in keys]
            ends = (
                await conn.execute(
                    select(message_buffer.c.status, buffer_processing_jobs.c.status)
                    .join(buffer_processing_jobs)
                    .where(message_buffer.c.id.in_([j.buffer_id for j in jobs]))
                )
            ).all()
        # Each buffer ends in exactly one terminal state, and its job agrees with it.
        assert len(ends) == CONVERSATIONS
        for buffer_status, job_status in ends:
            assert buffer_status in {"cancelled", WINNER[name]}, ends
            assert job_status == buffer_status, ends
