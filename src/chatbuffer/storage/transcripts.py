"""``SqlBurstArchive``: stored bursts read back for operators (``chatbuffer prompt show``/``try``).

Reads only, never on the hot path, on SQLite and PostgreSQL alike. The history rule is the
worker's (``SqlBufferStore.load``, the same statements): the conversation's rolling summary, and
the turns after it and before the burst's first message (the contact's messages of other
buffers, the bot's confirmed replies, human agents' messages and history fetched from Chatwoot),
the newest ``history_limit`` of them, oldest first. ``tests/integration/test_transcripts.py``
holds this and ``chatbuffer.testing.transcripts.MemoryBurstArchive`` to the same cases.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatbuffer.domain.model import (
    Attachment,
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
)
from chatbuffer.domain.ports import PostedMessage, StoredBurst, whole_message
from chatbuffer.storage import contents
from chatbuffer.storage import statements as sql
from chatbuffer.storage.tables import bot_replies, buffered_messages, message_buffer

#: What counts as the bot's answer to a burst, in order of preference.
_ANSWER_KINDS = ("reply", "handoff_note")


def _same_conversation(table: Any, key: ConversationKey) -> Any:
    return and_(
        table.c.account_id == key.account_id, table.c.conversation_id == key.conversation_id
    )


_HAS_MESSAGES = exists().where(
    buffered_messages.c.account_id == message_buffer.c.account_id,
    buffered_messages.c.conversation_id == message_buffer.c.conversation_id,
    buffered_messages.c.buffer_id == message_buffer.c.id,
)


class SqlBurstArchive:
    """Implements :class:`chatbuffer.domain.ports.BurstArchive`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def burst(self, buffer_id: uuid.UUID, history_limit: int) -> StoredBurst | None:
        # By id alone, across conversations: an operator names a buffer by its id.
        query = select(message_buffer).where(message_buffer.c.id == buffer_id, _HAS_MESSAGES)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
            return None if row is None else await _read(conn, row, history_limit)

    async def recent(self, limit: int, history_limit: int) -> list[StoredBurst]:
        query = (
            select(message_buffer)
            .where(_HAS_MESSAGES)
            .order_by(message_buffer.c.last_message_time.desc(), message_buffer.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            return [await _read(conn, row, history_limit) for row in rows]


async def _read(conn: AsyncConnection, row: Any, history_limit: int) -> StoredBurst:
    key = ConversationKey(row.account_id, row.conversation_id)
    rows = (
        await conn.execute(
            select(buffered_messages)
            .where(
                _same_conversation(buffered_messages, key), buffered_messages.c.buffer_id == row.id
            )
            .order_by(buffered_messages.c.chatwoot_message_id)
        )
    ).all()
    messages = [_inbound(key, r) for r in rows]
    answers = (
        await conn.execute(
            select(
                bot_replies.c.kind,
                bot_replies.c.content,
                bot_replies.c.chatwoot_message_id,
                bot_replies.c.part,
            )
            .where(
                _same_conversation(bot_replies, key),
                bot_replies.c.buffer_id == row.id,
                bot_replies.c.kind.in_(_ANSWER_KINDS),
            )
            .order_by(bot_replies.c.sent_at, bot_replies.c.part)
        )
    ).all()
    by_kind: dict[str, list[PostedMessage]] = {}
    for a in answers:
        by_kind.setdefault(a.kind, []).append(
            PostedMessage(a.kind, a.content, a.chatwoot_message_id, a.part)
        )
    answer = next((whole_message(by_kind[k]) for k in _ANSWER_KINDS if k in by_kind), None)
    history, summary = await _history(conn, key, row.id, messages, history_limit)
    return StoredBurst(
        buffer_id=row.id,
        key=key,
        status=row.status,
        messages=messages,
        history=history,
        answer=answer,
        last_message_at=row.last_message_time,
        summary=summary,
        assessment=contents.assessment(row),
    )


async def _history(
    conn: AsyncConnection,
    key: ConversationKey,
    buffer_id: uuid.UUID,
    burst: Sequence[InboundMessage],
    limit: int,
) -> tuple[list[HistoryEntry], ConversationSummary | None]:
    params = {
        "p_account_id": key.account_id,
        "p_conversation_id": key.conversation_id,
        "p_buffer_id": buffer_id,
    }
    memory = (await conn.execute(sql.MEMORY, params)).first()
    summary = (
        contents.summary(memory.summary, memory.summary_through, memory.summary_turns)
        if memory is not None
        else None
    )
    if limit <= 0 or not burst:
        return [], summary
    window = {
        **params,
        "p_before": burst[0].received_at,
        "p_after": summary.through if summary is not None else contents.NO_SUMMARY,
        "p_limit": limit,
    }
    earlier = (await conn.execute(sql.EARLIER_MESSAGES, window)).all()
    replies = (await conn.execute(sql.EARLIER_REPLIES, window)).all()
    history = (await conn.execute(sql.EARLIER_HISTORY, window)).all()
    turns = contents.turns(
        [(r.content, r.attachments, r.received_at) for r in earlier],
        [(r.content, r.sent_at) for r in replies],
        limit,
        [
            (r.chatwoot_message_id, r.role, r.author, r.content, r.attachments, r.happened_at)
            for r in history
        ],
    )
    return turns, summary


def _inbound(key: ConversationKey, row: Any) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=row.chatwoot_message_id,
        content=row.content,
        kind=row.message_type,
        content_type=row.content_type or "text",
        received_at=row.received_at,
        attachments=tuple(Attachment.from_json(a) for a in row.attachments or []),
        sender=row.sender_info or {},
        conversation=row.conversation_info or {},
    )
