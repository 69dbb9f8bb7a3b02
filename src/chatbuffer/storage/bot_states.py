"""``SqlBotStates``: each conversation's bot state (``conversation_bot_state``, migration 0015)
and the human takeover pause it is shown with (``conversations.human_active_until``).

Read once per held buffer by the worker, before it types; written on a hand-off, by an operator
and by a status webhook that hands the conversation back. Never part of a buffer's transactions:
a hand-off is recorded before the conversation is opened in Chatwoot, so a retry that finds the
note already posted still opens it. Every statement is keyed by the conversation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatbuffer.domain import bot_state
from chatbuffer.domain.bot_state import BotState, StoredState
from chatbuffer.domain.model import ConversationKey
from chatbuffer.storage import database
from chatbuffer.storage import statements as sql
from chatbuffer.storage.tables import UTCDateTime, conversation_bot_state, conversations

_state = conversation_bot_state

_KEY = and_(
    _state.c.account_id == bindparam("p_account_id"),
    _state.c.conversation_id == bindparam("p_conversation_id"),
)


def _one(column: Any, where: Any) -> Any:
    return select(column).where(where).scalar_subquery().label(column.name)


#: The stored state and the pause in one round trip (either row may be missing: a conversation
#: an operator turned off before it ever wrote has no ``conversations`` row).
READ_STATE = select(
    _one(_state.c.state, _KEY),
    _one(_state.c.reason, _KEY),
    _one(_state.c.since, _KEY),
    _one(conversations.c.human_active_until, sql.CONVERSATION),
)

_VALUES = {
    "account_id": bindparam("p_account_id"),
    "conversation_id": bindparam("p_conversation_id"),
    "state": bindparam("p_state"),
    "reason": bindparam("p_reason"),
    "since": bindparam("p_now", type_=UTCDateTime()),
    "updated_at": bindparam("p_now", type_=UTCDateTime()),
}


def _upsert(dialect: str, *, unless_off: bool) -> Any:
    """Set the state, creating the row; with ``unless_off`` an operator's off is kept."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(_state).values(_VALUES)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[_state.c.account_id, _state.c.conversation_id],
        set_={
            "state": excluded.state,
            "reason": excluded.reason,
            "since": excluded.since,
            "updated_at": excluded.updated_at,
        },
        where=_state.c.state != literal_column("'off'") if unless_off else None,
    )


def _resume(modes: tuple[str, ...]) -> Any:
    return (
        update(_state)
        .where(_KEY, _state.c.state.in_(modes))
        .values(
            state="active",
            reason=bindparam("p_reason"),
            since=bindparam("p_now", type_=UTCDateTime()),
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
    )


RESUME_HANDED_OFF = _resume(("handed_off",))
RESUME_ANY = _resume(("handed_off", "off"))


def _key(key: ConversationKey) -> dict[str, Any]:
    return {"p_account_id": key.account_id, "p_conversation_id": key.conversation_id}


class SqlBotStates:
    """Implements :class:`chatbuffer.domain.ports.BotStates` over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        self._hand_off = _upsert(dialect, unless_off=True)
        self._turn_off = _upsert(dialect, unless_off=False)

    async def state(self, key: ConversationKey, now: datetime) -> BotState:
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(**{database.READ_ONLY: True})
            return await self._read(conn, key, now)

    @staticmethod
    async def _read(conn: AsyncConnection, key: ConversationKey, now: datetime) -> BotState:
        row = (await conn.execute(READ_STATE, _key(key))).one()
        stored = None
        if row.state in bot_state.STORED_MODES:
            stored = StoredState(row.state, row.since, row.reason)
        return bot_state.current(stored, row.human_active_until, now)

    async def hand_off(self, key: ConversationKey, reason: str, now: datetime) -> None:
        await self._set(self._hand_off, key, "handed_off", reason, now)

    async def turn_off(self, key: ConversationKey, reason: str, now: datetime) -> None:
        await self._set(self._turn_off, key, "off", reason, now)

    async def _set(
        self, statement: Any, key: ConversationKey, mode: str, reason: str, now: datetime
    ) -> None:
        params = {**_key(key), "p_state": mode, "p_reason": reason, "p_now": now}
        async with self._engine.begin() as conn:
            await conn.execute(statement, params)

    async def resume(self, key: ConversationKey, now: datetime, *, by_operator: bool) -> bool:
        reason = "resumed by an operator" if by_operator else "handed back to the bot"
        params = {**_key(key), "p_reason": reason, "p_now": now}
        async with self._engine.begin() as conn:
            resumed = await conn.execute(RESUME_ANY if by_operator else RESUME_HANDED_OFF, params)
            unpaused = await conn.execute(sql.RESUME_BOT, params)
            if unpaused.rowcount and not resumed.rowcount:
                # Only a pause ended: recorded too, so `show` says when and how.
                await conn.execute(self._hand_off, {**params, "p_state": "active"})
        return bool(resumed.rowcount or unpaused.rowcount)
