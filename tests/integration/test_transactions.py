"""A buffer in at most four transactions end to end: its share of a claim, the load (with the send
check), the send reservation and the completion (issue 8).

Counted on the store's engine, as the database sees them: every transaction SQLAlchemy begins,
and every statement sent in autocommit on the pooled psycopg connection (PostgreSQL's function
calls, each its own transaction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey, HistoryEntry, InboundMessage, ModelDecision
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.flags import CachedControls
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import message_buffer
from chatbuffer.testing import (
    FakeClock,
    MemoryControls,
    RecordingChatwoot,
    RecordingObserver,
    ScriptedReplyModel,
    ScriptedSummarizer,
    StaticHistorySource,
)
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
LEASE = timedelta(seconds=10)
ANSWER = ModelDecision(should_respond=True, content="It ships today.", confidence=0.9, intent="x")


class Transactions:
    """Counts the transactions run on ``url``'s database through any engine of this process (the
    store's, and on SQLite its worker thread's); attach before the store's first connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        self._database = engine.url.database
        event.listen(Engine, "begin", self._begun)
        if engine.dialect.name == "postgresql":
            event.listen(engine.sync_engine.pool, "connect", self._watch_driver)

    def close(self) -> None:
        event.remove(Engine, "begin", self._begun)

    def _begun(self, connection: Connection) -> None:
        if connection.engine.url.database == self._database:
            self.count += 1

    def _watch_driver(self, dbapi_connection: Any, _record: Any) -> None:
        driver = dbapi_connection.driver_connection
        execute: Callable[..., Any] = driver.execute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            if driver.autocommit:  # one statement, one transaction
                self.count += 1
            return await execute(*args, **kwargs)

        driver.execute = counted


@pytest.fixture
async def counted(db_url: str) -> AsyncIterator[tuple[SqlBufferStore, Transactions]]:
    engine = database.create_engine(db_url, pool_size=2)
    transactions = Transactions(engine)
    try:
        yield SqlBufferStore(engine, database_clock=False), transactions
    finally:
        transactions.close()
        await engine.dispose()


def _pipeline(
    store: SqlBufferStore, clock: FakeClock, chatwoot: RecordingChatwoot, flags: CachedControls
) -> Pipeline:
    return Pipeline(
        history=store,
        ledger=store,
        flags=flags,
        chatwoot=chatwoot,
        model=ScriptedReplyModel(lambda _prompt: ANSWER),
        clock=clock,
        observer=RecordingObserver(),
        config=PipelineConfig(
            quality_threshold=0.7,
            typing_enabled=True,
            history_limit=10,
            retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
            policy=POLICY,
        ),
    )


async def _bursts(store: SqlBufferStore, clock: FakeClock, conversations: int) -> None:
    for conversation in range(1, conversations + 1):
        for mid in (1, 2):
            await store.record_incoming(
                InboundMessage(
                    key=ConversationKey(1, conversation),
                    chatwoot_message_id=conversation * 10 + mid,
                    content=f"message {mid}",
                    kind="text",
                    content_type="text",
                    received_at=datetime(2026, 1, 1, tzinfo=UTC),
                ),
                POLICY,
                clock.now(),
            )


@pytest.mark.parametrize("conversations", [1, 5])
async def test_an_answered_buffer_costs_at_most_four_transactions(
    counted: tuple[SqlBufferStore, Transactions], conversations: int
) -> None:
    store, transactions = counted
    clock = FakeClock()
    chatwoot = RecordingChatwoot()
    flags = CachedControls(MemoryControls(), clock)
    pipeline = _pipeline(store, clock, chatwoot, flags)
    await _bursts(store, clock, conversations)
    clock.advance(30)
    # The flags are read once per process every few seconds, not per buffer.
    await flags.is_enabled(Flag.TYPING_INDICATORS, ConversationKey(1, 1))

    transactions.count = 0
    jobs = await store.claim_due(clock.now(), "w1", LEASE, 10)
    for job in jobs:
        await pipeline.process(job, "w1")
    spent = transactions.count

    assert len(jobs) == conversations
    assert sorted(s.key.conversation_id for s in chatwoot.sent) == list(range(1, conversations + 1))
    async with store.engine.connect() as conn:
        statuses = (await conn.execute(select(message_buffer.c.status))).scalars().all()
    assert set(statuses) == {"completed"}
    # One claim for the batch, then load, reserve and complete for each buffer.
    assert spent <= 1 + 3 * conversations


async def test_the_first_fetch_from_chatwoot_and_a_summary_each_cost_one_more(
    counted: tuple[SqlBufferStore, Transactions],
) -> None:
    store, transactions = counted
    clock = FakeClock()
    key = ConversationKey(1, 1)
    start = clock.now() - timedelta(days=1)
    earlier = StaticHistorySource(
        messages={
            key: [
                HistoryEntry("contact", "do you ship?", start, chatwoot_message_id=1),
                HistoryEntry("agent", "Yes.", start, author="Carla", chatwoot_message_id=2),
            ]
        }
    )
    summarizer = ScriptedSummarizer()
    flags = CachedControls(MemoryControls(), clock)
    pipeline = Pipeline(
        history=store,
        ledger=store,
        flags=flags,
        chatwoot=RecordingChatwoot(),
        model=ScriptedReplyModel(lambda _prompt: ANSWER),
        clock=clock,
        observer=RecordingObserver(),
        memory=store,
        earlier=earlier,
        summarizer=summarizer,
        config=PipelineConfig(
            quality_threshold=0.7,
            typing_enabled=True,
            history_limit=1,
            summary_every=3,
            retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
            policy=POLICY,
        ),
    )
    spent = []
    for burst in range(1, 4):
        await store.record_incoming(
            InboundMessage(
                key=key,
                chatwoot_message_id=10 * burst,
                content=f"message {burst}",
                kind="text",
                content_type="text",
                received_at=clock.now(),
            ),
            POLICY,
            clock.now(),
        )
        clock.advance(30)
        # The flags are read every few seconds per process, not per buffer: not counted here.
        await flags.is_enabled(Flag.TYPING_INDICATORS, key)
        transactions.count = 0
        [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
        await pipeline.process(job, "w1")
        spent.append(transactions.count)
        clock.advance(60)
    # 1: fetched from Chatwoot (and kept). 2: five turns, one shown: the summary is made.
    # 3: two turns fell out since, fewer than three: nothing more.
    assert len(earlier.fetches) == 1
    assert len(summarizer.prompts) == 1
    assert spent == [4 + 1, 4 + 1, 4]
