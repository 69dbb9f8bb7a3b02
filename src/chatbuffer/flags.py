"""``CachedFlags``: feature flags per conversation, read from a ``FlagSource`` at most every 5 s."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from chatbuffer.domain import flags
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import Clock, FlagSource

#: How long a replica may act on a stale copy of the feature flags.
FLAG_TTL = timedelta(seconds=5)


class CachedFlags:
    """Implements ``FeatureFlags``: one read of the stored flags serves every call for ``ttl``.

    Callers that find the copy stale at the same moment share one read: hundreds of buffers
    claimed together would otherwise each read the table (and queue for a connection) at once.
    """

    def __init__(self, source: FlagSource, clock: Clock, ttl: timedelta = FLAG_TTL) -> None:
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._settings: dict[Flag, bool] = {}
        self._read_at: datetime | None = None
        self._reading: asyncio.Task[None] | None = None

    async def is_enabled(self, flag: Flag, key: ConversationKey) -> bool:
        now = self._clock.now()
        if self._read_at is None or now - self._read_at > self._ttl:
            if self._reading is None:
                self._reading = asyncio.create_task(self._read(now))
            # Shielded: one caller giving up (a lost lease) must not cancel the others' read.
            await asyncio.shield(self._reading)
        return flags.evaluate(flag, self._settings, key)

    async def _read(self, now: datetime) -> None:
        try:
            self._settings = flags.parse(await self._source.flags())
            self._read_at = now
        finally:
            self._reading = None
