"""``chatbuffer conversation``: one conversation as an operator sees it, and what an operator may
do to it (resume the bot, turn it off), on the database named by ``DATABASE_URL``.

Kept small on purpose: ``show`` prints a list of ``label: value`` lines, and more about a
conversation can be added as further lines.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from chatbuffer.clock import SystemClock
from chatbuffer.domain import bot_state
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import BotStates
from chatbuffer.settings import Settings
from chatbuffer.storage import database
from chatbuffer.storage.bot_states import SqlBotStates

T = TypeVar("T")

#: Chatwoot's ids are PostgreSQL integers.
MAX_ID = 2**31 - 1


def parse_id(text: str, what: str) -> int:
    """An account or conversation id as Chatwoot shows it; ``ValueError`` with the reason."""
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_ID:
        raise ValueError(f"{what} must be a whole number from 1 to {MAX_ID}, not {text!r}")
    return int(value)


async def _with_states(settings: Settings, act: Callable[[BotStates], Coroutine[Any, Any, T]]) -> T:
    engine = database.create_engine(settings.database_url, pool_size=1)
    try:
        return await act(SqlBotStates(engine))
    finally:
        await engine.dispose()


async def show(settings: Settings, key: ConversationKey) -> str:
    now = SystemClock().now()

    async def act(states: BotStates) -> str:
        return describe(key, await states.state(key, now))

    return await _with_states(settings, act)


async def resume(settings: Settings, key: ConversationKey) -> tuple[bool, str]:
    """Whether anything changed, and the conversation as it is now."""
    now = SystemClock().now()

    async def act(states: BotStates) -> tuple[bool, str]:
        changed = await states.resume(key, now, by_operator=True)
        return changed, describe(key, await states.state(key, now))

    return await _with_states(settings, act)


async def turn_off(settings: Settings, key: ConversationKey, reason: str) -> str:
    now = SystemClock().now()

    async def act(states: BotStates) -> str:
        await states.turn_off(key, reason, now)
        return describe(key, await states.state(key, now))

    return await _with_states(settings, act)


def describe(key: ConversationKey, state: bot_state.BotState) -> str:
    return "\n".join(
        [
            f"conversation: {key.account_id}/{key.conversation_id}",
            f"bot: {bot_state.describe(state)}",
        ]
    )
