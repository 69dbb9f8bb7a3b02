"""``MemoryWindowStates``: the smart windows' memory, in a dict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.smart_window import WindowState


@dataclass
class MemoryWindowStates:
    """Implements ``WindowStates``; ``states`` is open for tests."""

    states: dict[ConversationKey, WindowState] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def update(
        self, key: ConversationKey, change: Callable[[WindowState], WindowState]
    ) -> WindowState:
        async with self._lock:
            state = change(self.states.get(key, WindowState()))
            self.states[key] = state
            return state
