"""``MemoryControls``: the live controls in memory, with ``SqlControls``' semantics; and
``MemoryBotStates``, each conversation's bot state, with ``SqlBotStates``'."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from chatbuffer.domain import bot_state, flags
from chatbuffer.domain.bot_state import BotState, StoredState
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import StoredControls
from chatbuffer.testing.memory import MemoryStore


@dataclass
class MemoryControls:
    """Implements ``ControlSource`` and ``ControlWriter``; the rows are open for tests."""

    flag_rows: dict[str, bool] = field(
        default_factory=lambda: {f.value: f.default for f in flags.SEEDED}
    )
    values: dict[str, str] = field(default_factory=dict)
    reads: int = 0

    async def read_controls(self) -> StoredControls:
        self.reads += 1
        return StoredControls(flags=dict(self.flag_rows), values=dict(self.values))

    async def set_flag(self, flag: Flag, on: bool) -> None:
        self.flag_rows[flag.value] = on

    async def set_values(self, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                self.values.pop(name, None)
            else:
                self.values[name] = value


@dataclass
class MemoryBotStates:
    """Implements ``BotStates`` with ``SqlBotStates``' semantics; the human takeover pause is
    read from (and cleared in) ``store``'s conversations, as the SQL adapter reads the
    ``conversations`` table."""

    store: MemoryStore = field(default_factory=MemoryStore)
    rows: dict[ConversationKey, StoredState] = field(default_factory=dict)

    async def state(self, key: ConversationKey, now: datetime) -> BotState:
        conversation = self.store.conversations.get(key)
        until = conversation.human_active_until if conversation is not None else None
        return bot_state.current(self.rows.get(key), until, now)

    async def hand_off(self, key: ConversationKey, reason: str, now: datetime) -> None:
        found = self.rows.get(key)
        if found is None or found.mode != "off":
            self.rows[key] = StoredState("handed_off", now, reason)

    async def turn_off(self, key: ConversationKey, reason: str, now: datetime) -> None:
        self.rows[key] = StoredState("off", now, reason)

    async def resume(self, key: ConversationKey, now: datetime, *, by_operator: bool) -> bool:
        changed = False
        found = self.rows.get(key)
        modes = ("handed_off", "off") if by_operator else ("handed_off",)
        if found is not None and found.mode in modes:
            reason = "resumed by an operator" if by_operator else "handed back to the bot"
            self.rows[key] = StoredState("active", now, reason)
            changed = True
        conversation = self.store.conversations.get(key)
        if conversation is not None and conversation.human_active_until is not None:
            conversation.human_active_until = None
            if not changed and (found is None or found.mode != "off"):
                reason = "resumed by an operator" if by_operator else "handed back to the bot"
                self.rows[key] = StoredState("active", now, reason)
            changed = True
        return changed
