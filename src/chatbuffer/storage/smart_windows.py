"""``SqlWindowStates``: the smart windows' memory of each conversation, in ``smart_windows``.

Used only while a smart-window flag is on for the conversation: then each incoming message costs
one more transaction, keyed by the conversation like every hot-path statement. The row is created
empty first so that ``SELECT ... FOR UPDATE`` always has a row to lock, and two webhooks of one
conversation update it one after the other (on SQLite, ``BEGIN IMMEDIATE`` serialises them).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.smart_window import MessageShape, Rhythm, WindowState
from chatbuffer.storage.tables import smart_windows as windows

_KEY = (windows.c.account_id, windows.c.conversation_id)
_ONE_CONVERSATION = (windows.c.account_id == bindparam("key_account_id")) & (
    windows.c.conversation_id == bindparam("key_conversation_id")
)

SELECT_STATE = select(windows).where(_ONE_CONVERSATION).with_for_update()
UPDATE_STATE = update(windows).where(_ONE_CONVERSATION)


class SqlWindowStates:
    """Implements ``WindowStates`` over one engine (PostgreSQL or SQLite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert

    async def update(
        self, key: ConversationKey, change: Callable[[WindowState], WindowState]
    ) -> WindowState:
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(windows)
                .values(account_id=key.account_id, conversation_id=key.conversation_id, burst=[])
                .on_conflict_do_nothing(index_elements=list(_KEY))
            )
            where = {"key_account_id": key.account_id, "key_conversation_id": key.conversation_id}
            row = (await conn.execute(SELECT_STATE, where)).one()
            state = change(_state(row._mapping))
            await conn.execute(UPDATE_STATE.values(**_columns(state)), where)
        return state


def _ms(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp() * 1000


def _at(ms: float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _state(row: Any) -> WindowState:
    return WindowState(
        rhythm=Rhythm(row["gap_mean_ms"], row["gap_variance"], row["gap_samples"]),
        last_message_id=row["last_message_id"],
        last_message_at_ms=_ms(row["last_message_at"]),
        burst=tuple(MessageShape(int(c), bool(q), bool(v)) for c, q, v in row["burst"] or ()),
        closes_at_ms=_ms(row["closes_at"]),
        quiet_ms=row["quiet_ms"],
    )


def _columns(state: WindowState) -> dict[str, Any]:
    return {
        "gap_mean_ms": state.rhythm.mean_ms,
        "gap_variance": state.rhythm.variance,
        "gap_samples": state.rhythm.samples,
        "last_message_id": state.last_message_id,
        "last_message_at": _at(state.last_message_at_ms),
        "burst": [[s.chars, s.question, s.voice_pending] for s in state.burst],
        "closes_at": _at(state.closes_at_ms),
        "quiet_ms": state.quiet_ms,
    }
