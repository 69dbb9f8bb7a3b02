"""``TraceLog`` over SQL, and the read behind ``chatbuffer buffers trace``: everything stored about
one buffer, in the order it happened."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import ModelExchange
from chatbuffer.storage.tables import bot_replies, buffer_traces
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.storage.tables import buffered_messages as messages
from chatbuffer.storage.tables import message_buffer as buffers


class SqlTraceLog:
    """Implements :class:`chatbuffer.domain.ports.TraceLog`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record_exchange(self, exchange: ModelExchange) -> None:
        row = asdict(exchange)
        key: dict[str, int] = row.pop("key")
        async with self._engine.begin() as conn:
            await conn.execute(insert(buffer_traces).values(id=uuid.uuid4(), **key, **row))


@dataclass(frozen=True, slots=True)
class StoredTrace:
    """One buffer as stored: its row, job, messages (no text), model requests and sends."""

    key: ConversationKey
    status: str
    outcome: str | None
    started_at: datetime
    last_message_at: datetime
    job: dict[str, Any] | None
    messages: list[dict[str, Any]]
    exchanges: list[dict[str, Any]]
    sent: list[dict[str, Any]]


async def stored_trace(engine: AsyncEngine, buffer_id: uuid.UUID) -> StoredTrace | None:
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                select(
                    buffers.c.account_id,
                    buffers.c.conversation_id,
                    buffers.c.status,
                    buffers.c.outcome,
                    buffers.c.buffer_start_time,
                    buffers.c.last_message_time,
                ).where(buffers.c.id == buffer_id)
            )
        ).first()
        if found is None:
            return None
        key = ConversationKey(found.account_id, found.conversation_id)

        def owned(table: Any) -> Any:
            return (
                (table.c.account_id == key.account_id)
                & (table.c.conversation_id == key.conversation_id)
                & (table.c.buffer_id == buffer_id)
            )

        job = (
            await conn.execute(
                select(
                    jobs.c.status,
                    jobs.c.attempts,
                    jobs.c.scheduled_for,
                    jobs.c.error_message,
                    jobs.c.processed_at,
                ).where(owned(jobs))
            )
        ).first()
        burst = await conn.execute(
            select(
                messages.c.chatwoot_message_id,
                messages.c.received_at,
                messages.c.content_type,
                messages.c.attachments,
            )
            .where(owned(messages))
            .order_by(messages.c.received_at, messages.c.chatwoot_message_id)
        )
        asked = await conn.execute(
            select(
                buffer_traces.c.attempt,
                buffer_traces.c.requested_at,
                buffer_traces.c.duration_ms,
                buffer_traces.c.request,
                buffer_traces.c.answer,
                buffer_traces.c.decision,
                buffer_traces.c.error,
            )
            .where(owned(buffer_traces))
            .order_by(buffer_traces.c.requested_at, buffer_traces.c.attempt)
        )
        posted = await conn.execute(
            select(
                bot_replies.c.kind,
                bot_replies.c.content,
                bot_replies.c.chatwoot_message_id,
                bot_replies.c.sent_at,
            )
            .where(owned(bot_replies))
            .order_by(bot_replies.c.sent_at)
        )
        return StoredTrace(
            key=key,
            status=found.status,
            outcome=found.outcome,
            started_at=found.buffer_start_time,
            last_message_at=found.last_message_time,
            job=None if job is None else dict(job._mapping),
            messages=[
                {
                    "chatwoot_message_id": m.chatwoot_message_id,
                    "received_at": m.received_at,
                    "content_type": m.content_type,
                    "attachments": [a.get("file_type") for a in m.attachments or []],
                }
                for m in burst
            ],
            exchanges=[dict(row._mapping) for row in asked],
            sent=[dict(row._mapping) for row in posted],
        )
