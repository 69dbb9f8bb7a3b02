"""PostgreSQL: migration 0013's ``chatbuffer_claim`` takes what the claim statement took.

The worker now calls the function instead of sending ``statements.CLAIM``; both are run here on
the same rows (each in a transaction that is rolled back) and must pick the same jobs and leave
the same jobs, buffers and conversations behind. Then, through the store, a lease taken by the
function still fences: a second worker cannot take a live lease, takes an expired one, and the
first worker's completion is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, insert, select

from chatbuffer.domain.model import ConversationKey
from chatbuffer.storage import database
from chatbuffer.storage import statements as sql
from chatbuffer.storage.pg_worker import CLAIM
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.storage.tables import conversations
from chatbuffer.storage.tables import message_buffer as buffers
from tests.conftest import _empty_postgres

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture
def sync_engine(postgres_url: str) -> Iterator[Engine]:
    _empty_postgres(postgres_url)
    engine = create_engine(database.sync_url(postgres_url))
    try:
        yield engine
    finally:
        engine.dispose()


def _buffer(
    conn: Connection,
    conversation: int,
    seq: int,
    status: str,
    job: str,
    *,
    due: timedelta = -timedelta(seconds=1),
    lease_left: timedelta | None = None,
) -> uuid.UUID:
    """A buffer of conversation (1, ``conversation``) with its job; the conversation if new."""
    key = {"account_id": 1, "conversation_id": conversation}
    if (
        conn.execute(
            select(conversations.c.id).where(
                conversations.c.account_id == 1,
                conversations.c.chatwoot_conversation_id == conversation,
            )
        ).first()
        is None
    ):
        conn.execute(
            insert(conversations).values(
                id=uuid.uuid4(),
                account_id=1,
                chatwoot_conversation_id=conversation,
                conversation_state="idle",
                message_count=1,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    buffer_id = uuid.uuid4()
    at = NOW + due - timedelta(seconds=30)
    conn.execute(
        insert(buffers).values(
            id=buffer_id,
            **key,
            buffer_start_time=at,
            buffer_end_time=NOW + due,
            last_message_time=at,
            status=status,
            message_count=1,
            conversation_seq=seq,
            created_at=at,
            updated_at=at,
        )
    )
    job_id = uuid.uuid4()
    conn.execute(
        insert(jobs).values(
            id=job_id,
            buffer_id=buffer_id,
            **key,
            scheduled_for=NOW + due,
            status=job,
            attempts=1 if job == "running" else 0,
            lease_owner="someone" if job == "running" else None,
            lease_expires_at=None if lease_left is None else NOW + lease_left,
            created_at=at,
            updated_at=at,
        )
    )
    return job_id


def _fill(engine: Engine) -> None:
    """Every case the claim tells apart, due times spread so that the order matters."""
    with engine.begin() as conn:
        for n in range(10):  # due, oldest first by conversation number
            _buffer(conn, 100 + n, 1, "closed", "scheduled", due=-timedelta(seconds=60 - n))
        _buffer(conn, 2, 1, "active", "scheduled", due=timedelta(seconds=5))  # not due yet
        _buffer(conn, 3, 1, "processing", "running", lease_left=-timedelta(seconds=2))  # expired
        _buffer(conn, 4, 1, "processing", "running", lease_left=timedelta(seconds=20))  # live
        # Waits behind the buffer its conversation is still answering.
        _buffer(conn, 5, 1, "processing", "running", lease_left=timedelta(seconds=20))
        _buffer(conn, 5, 2, "closed", "scheduled", due=-timedelta(seconds=90))
        # Its earlier buffer is answered: claimable.
        _buffer(conn, 6, 1, "completed", "completed")
        _buffer(conn, 6, 2, "closed", "scheduled", due=-timedelta(seconds=80))
        _buffer(conn, 7, 1, "cancelled", "scheduled", due=-timedelta(seconds=85))  # cancelled


def _state(conn: Connection) -> tuple[Any, ...]:
    return (
        sorted(
            tuple(r)
            for r in conn.execute(
                select(
                    jobs.c.id,
                    jobs.c.status,
                    jobs.c.lease_owner,
                    jobs.c.lease_expires_at,
                    jobs.c.attempts,
                    jobs.c.updated_at,
                )
            )
        ),
        sorted(tuple(r) for r in conn.execute(select(buffers.c.id, buffers.c.status))),
        sorted(
            tuple(r)
            for r in conn.execute(
                select(conversations.c.chatwoot_conversation_id, conversations.c.conversation_state)
            )
        ),
    )


def _both_ways(engine: Engine, limit: int) -> tuple[Any, Any]:
    params = {
        "p_now": NOW,
        "p_owner": "worker-a",
        "p_lease": LEASE,
        "p_limit": limit,
        "p_clock": NOW,
    }
    statement = sql.CLAIM.compile(dialect=engine.dialect)
    outcomes = []
    for query, values in (
        (str(statement), statement.construct_params(params)),
        (CLAIM, params),
    ):
        with engine.connect() as conn:
            transaction = conn.begin()
            rows = sorted(tuple(r) for r in conn.exec_driver_sql(query, values).all())
            outcomes.append((rows, _state(conn)))
            transaction.rollback()
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("limit", [1, 3, 64])
def test_the_function_takes_what_the_statement_took(sync_engine: Engine, limit: int) -> None:
    _fill(sync_engine)
    statement, function = _both_ways(sync_engine, limit)
    assert function == statement
    rows, _ = function
    assert len(rows) == min(limit, 12)


def test_it_takes_expired_leases_first_then_the_oldest_due(sync_engine: Engine) -> None:
    _fill(sync_engine)
    (rows, (job_rows, buffer_rows, conversation_rows)), _ = _both_ways(sync_engine, 3)
    attempts = {conversation: tries for _, _, _, conversation, tries, *_ in rows}
    # The expired lease's job was tried once already.
    assert attempts == {3: 2, 6: 1, 100: 1}
    running = [j for j in job_rows if j[2] == "worker-a"]
    assert len(running) == 3
    assert all(j[1] == "running" and j[3] == NOW + LEASE for j in running)
    # Two more buffers are being answered (the expired lease's one already was).
    assert [status for _, status in buffer_rows].count("processing") == 3 + 2
    states = dict(conversation_rows)
    assert [c for c, state in states.items() if state == "processing"] == [3, 6, 100]


async def test_a_lease_taken_by_the_function_still_fences(
    postgres_url: str, sync_engine: Engine
) -> None:
    _fill(sync_engine)
    engine = database.create_engine(postgres_url, pool_size=2)
    store = SqlBufferStore(engine, database_clock=False)
    try:
        mine = await store.claim_due(NOW, "worker-a", LEASE, 64)
        assert len(mine) == 12
        assert await store.claim_due(NOW, "worker-b", LEASE, 64) == []
        later = NOW + LEASE + timedelta(seconds=1)
        theirs = await store.claim_due(later, "worker-b", LEASE, 64)
        first = next(j for j in mine if j.key == ConversationKey(1, 100))
        again = next(j for j in theirs if j.job_id == first.job_id)
        assert again.attempts == first.attempts + 1
        # Also the buffer that became due and the two other leases that ran out meanwhile.
        assert len(theirs) == 15
        assert not await store.complete(first, "worker-a", later, "replied")
        assert await store.complete(again, "worker-b", later, "replied")
    finally:
        await engine.dispose()
