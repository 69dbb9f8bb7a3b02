"""PostgreSQL: migration 0007's worker functions, called in autocommit on pooled connections.

What the store contract (``test_store.py``) cannot show: a call on a connection a database
restart broke is made again on a fresh one instead of failing the buffer, and a retry or a
completion wakes the workers of other processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import create_engine, text

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.storage import database
from chatbuffer.storage.repository import WAKE_CHANNEL, SqlBufferStore
from tests.conftest import _empty_postgres

pytestmark = pytest.mark.postgres

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
LEASE = timedelta(seconds=10)
KEY = ConversationKey(4, 401)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=[3, 8], ids=["borrowed", "kept"])
async def pg_store(
    postgres_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[SqlBufferStore]:
    """A pool too small for the worker to keep a connection between calls, and one it keeps
    two of (a quarter)."""
    _empty_postgres(postgres_url)
    engine = database.create_engine(postgres_url, pool_size=request.param)
    try:
        yield SqlBufferStore(engine, database_clock=False)
    finally:
        await engine.dispose()


def _cut_every_connection(url: str) -> None:
    """What a database restart does to the pool: every connection it holds is gone, unpinged."""
    admin = create_engine(database.sync_url(url))
    try:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        admin.dispose()


async def _claimed(store: SqlBufferStore, *mids: int):
    for mid in mids:
        await store.record_incoming(
            InboundMessage(KEY, mid, f"message {mid}", "text", "text", received_at=START),
            POLICY,
            START,
        )
    [job] = await store.claim_due(START + timedelta(seconds=31), "w1", LEASE, 5)
    return job


async def test_every_call_survives_a_restart_that_cut_the_pooled_connections(
    pg_store: SqlBufferStore, postgres_url: str
) -> None:
    store = pg_store
    job = await _claimed(store, 1, 2)
    now = START + timedelta(seconds=32)
    intent = PostedMessage("reply", "It ships today.")

    _cut_every_connection(postgres_url)
    contents = await store.load(job, "w1", 10)
    assert [m.chatwoot_message_id for m in contents.messages] == [1, 2]
    assert contents.check == "send"

    _cut_every_connection(postgres_url)
    assert await store.reserve_send(job, "w1", intent, now) == "send"

    _cut_every_connection(postgres_url)
    assert await store.complete(
        job, "w1", now, "replied", PostedMessage("reply", intent.content, 9)
    )
    assert (await store.load(job, "w1", 0)).posted == [PostedMessage("reply", intent.content, 9)]


async def test_a_retry_wakes_the_other_processes_at_its_due_time(
    pg_store: SqlBufferStore, postgres_url: str
) -> None:
    store = pg_store
    job = await _claimed(store, 1)
    retry_at = START + timedelta(seconds=40)
    conninfo = database.psycopg_conninfo(postgres_url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {WAKE_CHANNEL}")
        assert await store.release_for_retry(job, "w1", "model timed out", retry_at)
        notes = [n async for n in listener.notifies(timeout=1.0)]
    assert [datetime.fromisoformat(n.payload) for n in notes] == [retry_at]


async def test_the_worker_keeps_a_quarter_of_the_pool_between_calls(postgres_url: str) -> None:
    _empty_postgres(postgres_url)
    for size, kept in ((3, 0), (8, 2)):
        engine = database.create_engine(postgres_url, pool_size=size)
        store = SqlBufferStore(engine, database_clock=False)
        try:
            claims = [store.claim_due(START, f"w{n}", LEASE, 5) for n in range(6)]
            assert await asyncio.gather(*claims) == [[]] * 6
            assert engine.pool.checkedout() == kept  # type: ignore[attr-defined]
            # The rest of the pool is free for everything else.
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await engine.dispose()
        # Disposing the engine closed the kept connections too.
        assert await _other_backends(postgres_url) == 0


async def _other_backends(url: str) -> int:
    """Connections to the test database but this one, once closed ones have gone (2 s)."""
    conninfo = database.psycopg_conninfo(url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        count = -1
        for _ in range(40):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            row = await cursor.fetchone()
            count = -1 if row is None else int(row[0])
            if count == 0:
                break
            await asyncio.sleep(0.05)
    return count
