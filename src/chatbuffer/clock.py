"""The only module that reads the wall clock or sleeps on it.

Everything else takes a :class:`chatbuffer.domain.ports.Clock`, so tests can drive time with
:class:`chatbuffer.testing.FakeClock` instead of waiting.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime


class SystemClock:
    """Real time, always timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
