"""``CachedControls``: the operators' live controls (flags per inbox, the rollout), read
from a ``ControlSource`` at most every 5 s, so a change reaches every replica within 5 s."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from chatbuffer.domain import control
from chatbuffer.domain.control import Controls, Subject
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import Clock, ControlSource

#: How long a replica may act on a stale copy of the controls.
CONTROLS_TTL = timedelta(seconds=5)


class CachedControls:
    """Implements ``LiveControls``: one read of the stored controls serves every call for ``ttl``.

    Callers that find the copy stale at the same moment share one read: hundreds of buffers
    claimed together would otherwise each read the tables (and queue for a connection) at once.
    """

    def __init__(self, source: ControlSource, clock: Clock, ttl: timedelta = CONTROLS_TTL) -> None:
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._controls = Controls()
        self._read_at: datetime | None = None
        self._reading: asyncio.Task[None] | None = None

    async def current(self) -> Controls:
        now = self._clock.now()
        if self._read_at is None or now - self._read_at > self._ttl:
            if self._reading is None:
                self._reading = asyncio.create_task(self._read(now))
            # Shielded: one caller giving up (a lost lease) must not cancel the others' read.
            await asyncio.shield(self._reading)
        return self._controls

    async def is_enabled(
        self, flag: Flag, key: ConversationKey, *, inbox_id: int | None = None
    ) -> bool:
        return (await self.current()).flag(flag, Subject(key, inbox_id))

    async def _read(self, now: datetime) -> None:
        try:
            stored = await self._source.read_controls()
            self._controls = control.parse(stored.flags, stored.values)
            self._read_at = now
        finally:
            self._reading = None
