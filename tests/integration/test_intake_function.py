"""The PostgreSQL intake function against the domain rule it mirrors, and when it wakes workers.

``domain.buffer.place`` is authoritative; ``chatbuffer_intake`` (migration 0006) re-implements it
in plpgsql so a webhook costs one round trip. The property test runs the same arrivals (with
workers claiming buffers in between) through both and compares every placement; SQLite's intake,
which calls ``place`` itself, is run through the same sequences for its SQL around it.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, create_engine, text

from chatbuffer.domain import buffer
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.storage import database, sqlite_intake
from chatbuffer.storage.repository import WAKE_CHANNEL, SqlBufferStore

START = datetime(2026, 1, 1, tzinfo=UTC)
_conversations = itertools.count(1)


@dataclass(frozen=True)
class Placed:
    opened: bool
    message_count: int
    due: datetime
    closed: bool


def expected(events: list[Any], policy: buffer.BufferPolicy) -> list[Placed]:
    """What the domain rule says, arrival by arrival; a claim takes the collecting buffer."""
    current: buffer.BufferWindow | None = None
    placed = []
    for event in events:
        if event == "claim":
            current = None
            continue
        placement = buffer.place(current, policy, START + timedelta(milliseconds=event))
        current = None if placement.closes_now else placement.window
        placed.append(
            Placed(
                placement.opens_new,
                placement.window.message_count,
                placement.due,
                placement.closes_now,
            )
        )
    return placed


def _intake_pg(
    conn: Connection, conversation: int, message_id: int, now: datetime, policy: buffer.BufferPolicy
) -> Any:
    return conn.execute(
        text(
            "SELECT * FROM chatbuffer_intake(1, :c, :m, 'hi', 'text', 'text', '[]', '{}', '{}',"
            " :now, :quiet, :max_age, :max_size)"
        ),
        {
            "c": conversation,
            "m": message_id,
            "now": now,
            "quiet": policy.quiet_period,
            "max_age": policy.max_age,
            "max_size": policy.max_size,
        },
    ).one()


def _claim(conn: Connection | sqlite3.Connection, conversation: int) -> None:
    """What a worker's claim does to the conversation's collecting buffer and its job."""
    buffers = (
        "UPDATE message_buffer SET status = 'processing'"
        " WHERE conversation_id = {0} AND status = 'active' RETURNING id"
    )
    jobs = "UPDATE buffer_processing_jobs SET status = 'running' WHERE buffer_id = {0}"
    if isinstance(conn, sqlite3.Connection):
        for (claimed,) in conn.execute(buffers.format("?"), (conversation,)).fetchall():
            conn.execute(jobs.format("?"), (claimed,))
        return
    for claimed in conn.execute(text(buffers.format(":c")), {"c": conversation}).scalars().all():
        conn.execute(text(jobs.format(":b")), {"b": claimed})


@pytest.fixture(scope="module")
def pg(postgres_url: str) -> Iterator[Connection]:
    engine = create_engine(database.sync_url(postgres_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
    engine.dispose()


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    path: Path = tmp_path_factory.mktemp("intake") / "intake.db"
    database.migrate(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    yield conn
    conn.close()


events = st.lists(
    st.one_of(st.integers(min_value=-500, max_value=8_000), st.just("claim")),
    min_size=1,
    max_size=25,
)
policies = st.builds(
    lambda quiet, age, size: buffer.BufferPolicy(
        quiet_period=timedelta(milliseconds=quiet),
        max_age=timedelta(milliseconds=age),
        max_size=size,
    ),
    st.integers(min_value=0, max_value=5_000),
    st.integers(min_value=0, max_value=12_000),
    st.integers(min_value=1, max_value=6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, policy=policies)
def test_the_function_places_every_arrival_as_the_domain_rule_does(
    pg: Connection, lite: sqlite3.Connection, events: list[Any], policy: buffer.BufferPolicy
) -> None:
    conversation = next(_conversations)
    want = expected(events, policy)
    got_pg, got_lite = [], []
    for n, event in enumerate(events):
        if event == "claim":
            _claim(pg, conversation)
            _claim(lite, conversation)
            continue
        now = START + timedelta(milliseconds=event)
        row = _intake_pg(pg, conversation, conversation * 1000 + n, now, policy)
        assert row.outcome == "stored"
        got_pg.append(Placed(row.opened, row.message_count, row.due_at.astimezone(UTC), row.closed))
        message = InboundMessage(
            key=ConversationKey(1, conversation),
            chatwoot_message_id=conversation * 1000 + n,
            content="hi",
            kind="text",
            content_type="text",
            received_at=now,
        )
        lite.execute("BEGIN IMMEDIATE")
        result = sqlite_intake.record(lite, message, policy, now)
        lite.execute("COMMIT")
        assert result.due_at is not None
        got_lite.append(
            Placed(result.opened_buffer, result.message_count, result.due_at, result.closed)
        )
    assert got_pg == want
    assert got_lite == want
    # And what they stored agrees with what they answered: one collecting buffer at most.
    active = pg.execute(
        text(
            "SELECT count(*) FROM message_buffer WHERE conversation_id = :c AND status = 'active'"
        ),
        {"c": conversation},
    ).scalar_one()
    assert active == (1 if want and not want[-1].closed and events[-1] != "claim" else 0)


# -- wake-ups ----------------------------------------------------------------------------------

POLICY = buffer.BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=3
)


def test_only_a_new_due_time_an_earlier_one_or_a_closing_buffer_notifies(
    pg: Connection,
) -> None:
    pg.execute(text("UPDATE buffer_processing_jobs SET status = 'cancelled'"))
    first, second, third = (next(_conversations) for _ in range(3))
    at = START + timedelta(days=1)

    def notified(conversation: int, seconds: float, message: int) -> bool:
        row = _intake_pg(pg, conversation, message, at + timedelta(seconds=seconds), POLICY)
        return bool(row.notified)

    assert notified(first, 0, 1), "the only due buffer"
    assert not notified(first, 1, 2), "an extension only moves the due time later"
    assert notified(second, 2, 3), "a new buffer: only each worker knows what it sleeps towards"
    _claim(pg, first)
    _claim(pg, second)
    assert not notified(first, 3, 4), "it waits for the older buffer being answered"
    assert notified(third, 4, 5), "a new buffer"
    assert not notified(third, 5, 6)
    assert notified(third, 6, 7), "the third message fills the buffer: due at once"


async def test_a_notification_reaches_a_listener_only_after_the_intake_committed(
    postgres_url: str,
) -> None:
    conninfo = database.psycopg_conninfo(postgres_url)
    engine = database.create_engine(postgres_url, pool_size=2)
    store = SqlBufferStore(engine)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {WAKE_CHANNEL}")
        await listener.execute("UPDATE buffer_processing_jobs SET status = 'cancelled'")
        key = ConversationKey(1, next(_conversations))
        now = START + timedelta(days=2)
        result = await store.record_incoming(
            InboundMessage(key, 1, "hi", "text", "text", received_at=now), POLICY, now
        )
        notes = [n async for n in listener.notifies(timeout=1.0)]
    await engine.dispose()
    assert [datetime.fromisoformat(n.payload) for n in notes] == [result.due_at]


async def test_finishing_a_buffer_wakes_workers_for_the_newer_one_it_held_back(
    postgres_url: str,
) -> None:
    conninfo = database.psycopg_conninfo(postgres_url)
    engine = database.create_engine(postgres_url, pool_size=2)
    store = SqlBufferStore(engine)
    key = ConversationKey(1, next(_conversations))
    now = START + timedelta(days=3)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute("UPDATE buffer_processing_jobs SET status = 'cancelled'")
        await store.record_incoming(
            InboundMessage(key, 11, "hi", "text", "text", received_at=now), POLICY, now
        )
        [job] = await store.claim_due(now + timedelta(seconds=31), "w1", timedelta(seconds=10), 5)
        later = now + timedelta(seconds=32)
        await store.record_incoming(
            InboundMessage(key, 12, "again", "text", "text", received_at=later), POLICY, later
        )
        # The newer buffer waits for the one being answered: no worker needs to hear of it yet.
        await listener.execute(f"LISTEN {WAKE_CHANNEL}")
        assert await store.complete(job, "w1", later, "answered")
        notes = [n async for n in listener.notifies(timeout=1.0)]
    await engine.dispose()
    assert [datetime.fromisoformat(n.payload) for n in notes] == [later + POLICY.quiet_period]


async def test_a_webhook_after_a_database_restart_cut_every_pooled_connection_is_stored(
    pg: Connection, postgres_url: str
) -> None:
    engine = database.create_engine(postgres_url, pool_size=3)
    store = SqlBufferStore(engine)
    key = ConversationKey(1, next(_conversations))
    now = START + timedelta(days=4)

    async def deliver(message_id: int) -> bool:
        message = InboundMessage(key, message_id, "hi", "text", "text", received_at=now)
        return (await store.record_incoming(message, POLICY, now)).stored

    try:
        assert all([await deliver(n) for n in (1, 2, 3)])
        # What a restart does to the pool: every connection it holds is gone, unpinged.
        pg.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        assert await deliver(4)
        assert not await deliver(4), "stored once"
    finally:
        await engine.dispose()
