"""Wake-ups for the scheduler: sleep until the next due time unless an earlier one appears."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from chatbuffer.domain.ports import Clock
from chatbuffer.worker.waits import wait_any

logger = logging.getLogger(__name__)


class Waker:
    """An interruptible sleep.

    ``poke(due)`` ends the current sleep only when ``due`` is earlier than the instant the
    scheduler is sleeping towards, so a stream of later-due messages costs no extra queries.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._event = asyncio.Event()
        self._target: datetime | None = None
        self._sleeping = False

    def poke(self, due: datetime | None = None) -> None:
        if not self._sleeping or due is None or self._target is None or due < self._target:
            self._event.set()

    async def sleep_until(self, target: datetime | None, max_seconds: float) -> None:
        now = self._clock.now()
        seconds = max_seconds
        if target is not None:
            seconds = min(max_seconds, max(0.0, (target - now).total_seconds()))
        if seconds <= 0 or self._event.is_set():
            self._event.clear()
            return
        self._target = target
        self._sleeping = True
        poked = asyncio.ensure_future(self._event.wait())
        try:
            await wait_any(self._clock, {poked}, seconds)
        finally:
            poked.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poked
            self._sleeping = False
            self._target = None
            self._event.clear()
