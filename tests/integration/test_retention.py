"""Purge on SQLite and PostgreSQL: old finished buffers go with all they own, nothing else does."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.model import ConversationKey, ConversationSummary, HistoryEntry
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.retention import PURGE_INTERVAL, PurgeReport, purge, purge_periodically
from chatbuffer.storage.tables import (
    bot_replies,
    buffer_processing_jobs,
    buffer_traces,
    buffered_messages,
    conversation_memory,
    conversations,
    history_messages,
    message_buffer,
)
from chatbuffer.testing import FakeClock
from tests.conftest import _empty_postgres

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)
OLD = CUTOFF - timedelta(days=1)
RECENT = CUTOFF + timedelta(days=1)
JOB_STATUS = {
    "completed": "completed",
    "superseded": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
    "active": "scheduled",
    "closed": "scheduled",
    "processing": "running",
}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = database.create_engine(db_url, pool_size=3)
    try:
        yield engine
    finally:
        await engine.dispose()


class Stored:
    """Writes rows as the service would leave them, with a chosen status and age."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.message_ids = iter(range(1, 1_000_000))
        self.seq: dict[ConversationKey, int] = {}

    async def buffer(
        self,
        key: ConversationKey,
        status: str,
        updated_at: datetime,
        *,
        messages: int = 2,
        replied: bool = False,
    ) -> uuid.UUID:
        buffer_id = uuid.uuid4()
        seq = self.seq.get(key, 0)
        self.seq[key] = seq + messages
        at = updated_at - timedelta(minutes=5)
        owner = {"account_id": key.account_id, "conversation_id": key.conversation_id}
        async with self.engine.begin() as conn:
            found = await conn.scalar(
                select(conversations.c.id).where(
                    conversations.c.account_id == key.account_id,
                    conversations.c.chatwoot_conversation_id == key.conversation_id,
                )
            )
            if found is None:
                await conn.execute(
                    insert(conversations).values(
                        id=uuid.uuid4(),
                        account_id=key.account_id,
                        chatwoot_conversation_id=key.conversation_id,
                        created_at=at,
                        updated_at=at,
                    )
                )
            await conn.execute(
                insert(message_buffer).values(
                    id=buffer_id,
                    **owner,
                    buffer_start_time=at,
                    last_message_time=at,
                    status=status,
                    message_count=messages,
                    conversation_seq=seq,
                    created_at=at,
                    updated_at=updated_at,
                )
            )
            await conn.execute(
                insert(buffer_processing_jobs).values(
                    id=uuid.uuid4(),
                    buffer_id=buffer_id,
                    **owner,
                    scheduled_for=at,
                    status=JOB_STATUS[status],
                    created_at=at,
                    updated_at=updated_at,
                )
            )
            for _ in range(messages):
                await conn.execute(
                    insert(buffered_messages).values(
                        id=uuid.uuid4(),
                        buffer_id=buffer_id,
                        **owner,
                        chatwoot_message_id=next(self.message_ids),
                        content="my address is 12 Rua Augusta",
                        message_type="incoming",
                        sender_info={"name": "Ana", "phone_number": "+351900000000"},
                        conversation_info={},
                        received_at=at,
                    )
                )
            if replied:
                await conn.execute(
                    insert(bot_replies).values(
                        id=uuid.uuid4(),
                        buffer_id=buffer_id,
                        **owner,
                        kind="reply",
                        content="We deliver there tomorrow.",
                        chatwoot_message_id=next(self.message_ids),
                        sent_at=updated_at,
                    )
                )
                # The model request behind the reply quotes the customer too.
                await conn.execute(
                    insert(buffer_traces).values(
                        id=uuid.uuid4(),
                        buffer_id=buffer_id,
                        **owner,
                        attempt=1,
                        requested_at=at,
                        duration_ms=800,
                        request={"messages": [{"role": "user", "content": "12 Rua Augusta"}]},
                        answer='{"content": "We deliver there tomorrow."}',
                    )
                )
            # The service leaves the conversation naming its last buffer after it is answered.
            await conn.execute(
                update(conversations)
                .where(
                    conversations.c.account_id == key.account_id,
                    conversations.c.chatwoot_conversation_id == key.conversation_id,
                )
                .values(active_buffer_id=buffer_id)
            )
        return buffer_id

    async def remaining(self) -> dict[str, set[uuid.UUID]]:
        """The buffer ids each table still holds rows for."""
        async with self.engine.connect() as conn:
            return {
                table.name: set((await conn.execute(select(column).distinct())).scalars())
                for table, column in [
                    (message_buffer, message_buffer.c.id),
                    (buffered_messages, buffered_messages.c.buffer_id),
                    (buffer_processing_jobs, buffer_processing_jobs.c.buffer_id),
                    (bot_replies, bot_replies.c.buffer_id),
                    (buffer_traces, buffer_traces.c.buffer_id),
                ]
            }


async def test_purge_deletes_old_finished_buffers_with_what_they_own_and_nothing_else(
    engine: AsyncEngine,
) -> None:
    stored = Stored(engine)
    old_done = [
        await stored.buffer(ConversationKey(1, 10), "completed", OLD, replied=True),
        await stored.buffer(ConversationKey(1, 10), "superseded", OLD),
        await stored.buffer(ConversationKey(1, 11), "cancelled", OLD, messages=1),
        await stored.buffer(ConversationKey(2, 10), "failed", OLD, replied=True),
    ]
    kept = [
        await stored.buffer(ConversationKey(1, 10), "completed", RECENT, replied=True),
        await stored.buffer(ConversationKey(1, 12), "active", OLD),
        await stored.buffer(ConversationKey(1, 13), "closed", OLD),
        await stored.buffer(ConversationKey(1, 14), "processing", OLD, replied=True),
    ]
    everything = await stored.remaining()

    preview = await purge(engine, CUTOFF, dry_run=True)
    assert preview == PurgeReport(buffers=4, messages=7, jobs=4, replies=2, dry_run=True)
    assert await stored.remaining() == everything

    report = await purge(engine, CUTOFF)
    assert report == PurgeReport(buffers=4, messages=7, jobs=4, replies=2)
    left = await stored.remaining()
    assert left["message_buffer"] == set(kept)
    assert left["buffered_messages"] == set(kept)
    assert left["buffer_processing_jobs"] == set(kept)
    assert left["bot_replies"] == {kept[0], kept[3]}
    assert left["buffer_traces"] == {kept[0], kept[3]}
    assert not set(old_done) & set().union(*left.values())
    async with engine.connect() as conn:
        active = dict(
            (
                await conn.execute(
                    select(
                        conversations.c.chatwoot_conversation_id, conversations.c.active_buffer_id
                    )
                )
            ).all()
        )
    # Conversation 11's last buffer is gone, so it names none; the others' are kept.
    assert active[11] is None
    assert active[12] == kept[1]

    assert await purge(engine, CUTOFF) == PurgeReport()


async def test_purge_works_in_batches_until_nothing_old_is_left(engine: AsyncEngine) -> None:
    stored = Stored(engine)
    for conversation in range(5):
        await stored.buffer(ConversationKey(1, conversation), "completed", OLD, messages=1)
    report = await purge(engine, CUTOFF, batch_size=2)
    assert report == PurgeReport(buffers=5, messages=5, jobs=5, replies=0)
    assert (await stored.remaining())["message_buffer"] == set()


async def test_purge_forgets_agents_and_fetched_messages_and_summaries_by_their_age(
    engine: AsyncEngine,
) -> None:
    store = SqlBufferStore(engine, database_clock=False)
    key, other = ConversationKey(1, 20), ConversationKey(1, 21)

    def said(mid: int, at: datetime) -> HistoryEntry:
        return HistoryEntry("agent", f"agent {mid}", at, author="Bruno", chatwoot_message_id=mid)

    await store.record_agent_message(key, said(1, OLD), OLD, "agent")
    await store.record_agent_message(key, said(2, RECENT), RECENT, "agent")
    await store.record_backfill(other, [said(3, OLD - timedelta(days=300))], OLD)
    await store.save_summary(key, ConversationSummary("old news", OLD, 4), OLD)
    await store.save_summary(other, ConversationSummary("fresh", RECENT, 2), RECENT)

    preview = await purge(engine, CUTOFF, dry_run=True)
    assert (preview.history, preview.summaries) == (2, 1)
    report = await purge(engine, CUTOFF, batch_size=1)
    assert (report.history, report.summaries, report.buffers) == (2, 1, 0)
    async with engine.connect() as conn:
        left = (await conn.execute(select(history_messages.c.chatwoot_message_id))).scalars()
        memory = {
            r.conversation_id: (r.summary, r.summary_turns, r.backfilled_at is not None)
            for r in await conn.execute(select(conversation_memory))
        }
    assert list(left) == [2]
    # The fetch is remembered, so the old messages are not fetched (and kept) again.
    assert memory == {20: (None, 0, False), 21: ("fresh", 2, True)}
    assert await purge(engine, CUTOFF) == PurgeReport()


HOLDERS = {
    # A replay locks the conversation, then the job, then the buffer; intake the conversation.
    "conversation": lambda key, _: select(conversations.c.id).where(
        conversations.c.account_id == key.account_id,
        conversations.c.chatwoot_conversation_id == key.conversation_id,
    ),
    "job": lambda _, buffer_id: select(buffer_processing_jobs.c.id).where(
        buffer_processing_jobs.c.buffer_id == buffer_id
    ),
    "buffer": lambda _, buffer_id: select(message_buffer.c.id).where(
        message_buffer.c.id == buffer_id
    ),
}


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL only: SQLite serialises writers, so it has no row lock a purge could skip."""
    _empty_postgres(postgres_url)
    engine = database.create_engine(postgres_url, pool_size=3)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("row", list(HOLDERS))
async def test_purge_skips_a_buffer_whose_rows_another_transaction_holds(
    pg_engine: AsyncEngine, row: str
) -> None:
    engine = pg_engine
    stored = Stored(engine)
    key = ConversationKey(1, 1)
    held = await stored.buffer(key, "failed", OLD)
    free = await stored.buffer(ConversationKey(1, 2), "failed", OLD)
    async with engine.connect() as other:
        await other.execute(HOLDERS[row](key, held).with_for_update())
        # Purge neither waits for the holder nor deletes what it holds.
        assert await asyncio.wait_for(purge(engine, CUTOFF), 10) == PurgeReport(
            buffers=1, messages=2, jobs=1
        )
        await other.rollback()
    assert (await stored.remaining())["message_buffer"] == {held}
    assert free not in (await stored.remaining())["buffered_messages"]


class WatchedClock(FakeClock):
    """Tells when the purge loop has finished a round and gone to sleep."""

    def __init__(self) -> None:
        super().__init__(NOW)
        self.naps: asyncio.Queue[float] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        self.naps.put_nowait(seconds)
        await super().sleep(seconds)


async def test_a_worker_with_a_retention_period_purges_at_start_and_every_hour(
    engine: AsyncEngine,
) -> None:
    stored = Stored(engine)
    old = await stored.buffer(ConversationKey(1, 1), "completed", OLD)
    soon_old = await stored.buffer(
        ConversationKey(1, 2), "completed", CUTOFF + timedelta(minutes=30)
    )
    clock = WatchedClock()
    loop = asyncio.create_task(purge_periodically(engine, clock, keep=timedelta(days=30)))
    try:
        assert await asyncio.wait_for(clock.naps.get(), 30) == PURGE_INTERVAL.total_seconds()
        assert (await stored.remaining())["message_buffer"] == {soon_old}
        clock.advance(PURGE_INTERVAL)
        await asyncio.wait_for(clock.naps.get(), 30)
        assert (await stored.remaining())["message_buffer"] == set()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert old not in (await stored.remaining())["buffered_messages"]
