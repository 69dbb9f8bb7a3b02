"""``SqlSubjects``: a conversation's inbox and contact, read from its newest stored message."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.control import Subject
from chatbuffer.domain.model import ConversationKey
from chatbuffer.storage import database
from chatbuffer.storage.tables import buffered_messages

_m = buffered_messages.c


class SqlSubjects:
    """Implements ``ConversationSubjects``: one indexed read by the conversation key, asked
    only while shadow mode is on."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def subject(self, key: ConversationKey) -> Subject:
        query = (
            select(_m.conversation_info, _m.sender_info)
            .where(_m.account_id == key.account_id, _m.conversation_id == key.conversation_id)
            .order_by(_m.received_at.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(**{database.READ_ONLY: True})
            row = (await conn.execute(query)).first()
        if row is None:
            return Subject(key)
        return Subject(
            key,
            inbox_id=_number(row.conversation_info, "inbox_id"),
            contact_id=_number(row.sender_info, "id"),
        )


def _number(info: object, name: str) -> int | None:
    value = info.get(name) if isinstance(info, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
