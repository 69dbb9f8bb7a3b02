"""PostgreSQL intake under load: webhooks that arrive together are stored together, each exactly
as it would be alone, one that cannot be stored fails alone, and two processes' groups never
deadlock on each other's conversations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import IntakeResult
from chatbuffer.storage import database, pg_intake
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import buffered_messages, message_buffer
from tests.conftest import _empty_postgres
from tests.integration.test_store import message

pytestmark = pytest.mark.postgres

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
START = datetime(2026, 1, 1, tzinfo=UTC)
CONVERSATIONS = 20
PER_CONVERSATION = 10


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    _empty_postgres(postgres_url)
    engine = database.create_engine(postgres_url, pool_size=8)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group sent to the database in one statement."""
    sizes: list[int] = []
    send = pg_intake._on_driver_many

    async def counted(engine: AsyncEngine, group: Any) -> list[tuple[Any, ...]]:
        sizes.append(len(group))
        return await send(engine, group)

    monkeypatch.setattr(pg_intake, "_on_driver_many", counted)
    return sizes


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The message ids stored on their own after their group failed."""
    ids: list[int] = []
    store_one = pg_intake._record_one

    async def counted(engine: AsyncEngine, params: Any) -> IntakeResult:
        ids.append(params["p_message_id"])
        return await store_one(engine, params)

    monkeypatch.setattr(pg_intake, "_record_one", counted)
    return ids


def _arrivals(conversation_ids: list[int]) -> list[tuple[int, ConversationKey, datetime]]:
    """Message id, conversation and arrival time, in arrival order, round robin."""
    arrivals: list[tuple[int, ConversationKey, datetime]] = []
    for _ in range(PER_CONVERSATION):
        for c in conversation_ids:
            mid = len(arrivals) + 1
            arrivals.append((mid, ConversationKey(1, c), START + timedelta(milliseconds=mid)))
    return arrivals


async def _deliver(
    store: SqlBufferStore, arrivals: list[tuple[int, ConversationKey, datetime]], first_id: int = 0
) -> list[IntakeResult | BaseException]:
    return await asyncio.gather(
        *(
            store.record_incoming(message(first_id + mid, key), POLICY, now)
            for mid, key, now in arrivals
        ),
        return_exceptions=True,
    )


async def test_messages_arriving_together_are_grouped_and_each_stored_as_if_alone(
    engine: AsyncEngine, groups: list[int], alone: list[int]
) -> None:
    arrivals = _arrivals(list(range(1, CONVERSATIONS + 1)))
    results = await _deliver(SqlBufferStore(engine, database_clock=False), arrivals)

    assert sum(groups) == len(arrivals) and max(groups) > 1, groups
    assert alone == []
    by_conversation: dict[int, list[IntakeResult]] = {}
    for (_, key, _), result in zip(arrivals, results, strict=True):
        assert isinstance(result, IntakeResult) and result.stored
        by_conversation.setdefault(key.conversation_id, []).append(result)
    for conversation_id, placed in by_conversation.items():
        # One buffer per conversation, opened once and extended by every other message, due
        # a quiet period after its latest message. (Concurrent deliveries of one conversation
        # are stored in the order they reach its row lock, with or without groups.)
        assert sorted(r.message_count for r in placed) == list(range(1, PER_CONVERSATION + 1))
        assert sum(r.opened_buffer for r in placed) == 1
        assert len({r.buffer_id for r in placed}) == 1
        last = max(now for _, key, now in arrivals if key.conversation_id == conversation_id)
        assert max(r.due_at for r in placed if r.due_at) == last + POLICY.quiet_period
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(buffered_messages)) == len(
            arrivals
        )
        assert await conn.scalar(select(func.count()).select_from(message_buffer)) == (
            CONVERSATIONS
        )

    # A delivery Chatwoot sends again is recognised inside a group too.
    again = await _deliver(SqlBufferStore(engine, database_clock=False), arrivals[:30])
    assert all(isinstance(r, IntakeResult) and not r.stored for r in again)


async def test_a_message_the_database_refuses_fails_alone(
    engine: AsyncEngine, groups: list[int], alone: list[int]
) -> None:
    arrivals = _arrivals(list(range(1, CONVERSATIONS + 1)))
    # Beyond PostgreSQL's integer: the whole group's statement fails.
    bad = (10_000, ConversationKey(1, 2**31), START)
    arrivals.insert(len(arrivals) // 2, bad)

    results = await _deliver(SqlBufferStore(engine, database_clock=False), arrivals)

    assert alone, "the refused message's group was not retried message by message"
    for (mid, _, _), result in zip(arrivals, results, strict=True):
        if mid == bad[0]:
            assert isinstance(result, Exception)
        else:
            assert isinstance(result, IntakeResult) and result.stored, (mid, result)
    async with engine.connect() as conn:
        stored = await conn.scalar(select(func.count()).select_from(buffered_messages))
    assert stored == len(arrivals) - 1


async def test_two_processes_storing_the_same_conversations_in_opposite_orders_never_deadlock(
    engine: AsyncEngine, postgres_url: str, groups: list[int], alone: list[int]
) -> None:
    other = database.create_engine(postgres_url, pool_size=8)
    try:
        forward = _arrivals(list(range(1, CONVERSATIONS + 1)))
        backward = _arrivals(list(range(CONVERSATIONS, 0, -1)))
        first, second = await asyncio.gather(
            _deliver(SqlBufferStore(engine, database_clock=False), forward),
            _deliver(SqlBufferStore(other, database_clock=False), backward, first_id=1_000),
        )
    finally:
        await other.dispose()

    assert all(isinstance(r, IntakeResult) and r.stored for r in first + second)
    # Every group went through in one statement: none was aborted as a deadlock victim and
    # stored again message by message.
    assert alone == [] and max(groups) > 1
