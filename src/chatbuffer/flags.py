"""``CachedFlags``: feature flags per conversation, read from a ``FlagSource`` at most every 5 s."""

from __future__ import annotations

from datetime import datetime, timedelta

from chatbuffer.domain import flags
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import Clock, FlagSource

#: How long a replica may act on a stale copy of the feature flags.
FLAG_TTL = timedelta(seconds=5)


class CachedFlags:
    """Implements ``FeatureFlags``: one read of the stored flags serves every call for ``ttl``."""

    def __init__(self, source: FlagSource, clock: Clock, ttl: timedelta = FLAG_TTL) -> None:
        self._source = source
        self._clock = clock
        self._ttl = ttl
        self._settings: dict[Flag, bool] = {}
        self._read_at: datetime | None = None

    async def is_enabled(self, flag: Flag, key: ConversationKey) -> bool:
        now = self._clock.now()
        if self._read_at is None or now - self._read_at > self._ttl:
            self._settings = flags.parse(await self._source.flags())
            self._read_at = now
        return flags.evaluate(flag, self._settings, key)
