"""What a store holds, read the same way from the SQL tables and from ``MemoryStore``.

The contract test asserts on these rows, so one assertion checks the database and the fake alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import (
    buffer_processing_jobs,
    buffered_messages,
    conversations,
    message_buffer,
)
from chatbuffer.testing import MemoryStore


@dataclass(frozen=True)
class BufferRow:
    id: uuid.UUID
    status: str
    message_count: int
    due: datetime | None
    outcome: str | None


@dataclass(frozen=True)
class JobRow:
    buffer_id: uuid.UUID
    status: str
    scheduled_for: datetime
    attempts: int
    error_message: str | None


@dataclass(frozen=True)
class ConversationRow:
    state: str
    message_count: int
    active_buffer_id: uuid.UUID | None


@dataclass(frozen=True)
class MessageRow:
    chatwoot_message_id: int
    buffer_id: uuid.UUID
    content: str | None


@dataclass(frozen=True)
class Snapshot:
    buffers: list[BufferRow]
    jobs: list[JobRow]
    conversations: list[ConversationRow]
    messages: list[MessageRow]

    def buffer(self, buffer_id: uuid.UUID | None) -> BufferRow:
        return next(b for b in self.buffers if b.id == buffer_id)


async def snapshot(store: MemoryStore | SqlBufferStore) -> Snapshot:
    if isinstance(store, MemoryStore):
        return _memory(store)
    async with store.engine.connect() as conn:
        bufs = (await conn.execute(select(message_buffer))).all()
        jobs = (await conn.execute(select(buffer_processing_jobs))).all()
        convs = (await conn.execute(select(conversations))).all()
        msgs = (await conn.execute(select(buffered_messages))).all()
    return Snapshot(
        buffers=[
            BufferRow(b.id, b.status, b.message_count, b.buffer_end_time, b.outcome) for b in bufs
        ],
        jobs=[
            JobRow(j.buffer_id, j.status, j.scheduled_for, j.attempts, j.error_message)
            for j in jobs
        ],
        conversations=[
            ConversationRow(c.conversation_state, c.message_count, c.active_buffer_id)
            for c in convs
        ],
        messages=sorted(
            (MessageRow(m.chatwoot_message_id, m.buffer_id, m.content) for m in msgs),
            key=lambda m: m.chatwoot_message_id,
        ),
    )


def _memory(store: MemoryStore) -> Snapshot:
    return Snapshot(
        buffers=[
            BufferRow(b.id, b.status, b.window.message_count, b.due, b.outcome)
            for b in store.buffers.values()
        ],
        jobs=[
            JobRow(j.buffer_id, j.status, j.scheduled_for, j.attempts, j.error_message)
            for j in store.jobs.values()
        ],
        conversations=[
            ConversationRow(c.state, c.message_count, c.active_buffer_id)
            for c in store.conversations.values()
        ],
        messages=sorted(
            (
                MessageRow(m.message.chatwoot_message_id, m.buffer_id, m.message.content)
                for m in store.messages
            ),
            key=lambda m: m.chatwoot_message_id,
        ),
    )
