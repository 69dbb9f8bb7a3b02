"""PostgreSQL LISTEN: turns other processes' NOTIFYs into local wake-ups (``WakeSignals``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import psycopg

from chatbuffer.domain.ports import Clock, WakeCallback
from chatbuffer.storage.statements import WAKE_CHANNEL

logger = logging.getLogger(__name__)

RECONNECT_DELAY_S = 1.0


class PgWakeListener:
    """Holds one dedicated connection in LISTEN; reconnects when it drops.

    A session connection is needed: LISTEN does not survive a transaction-pooling proxy.
    """

    def __init__(self, conninfo: str, clock: Clock) -> None:
        self._conninfo = conninfo
        self._clock = clock

    async def listen(self, wake: WakeCallback) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    # Anything notified while we were not listening is found by a fresh scan.
                    wake(None)
                    async for note in conn.notifies():
                        wake(_due(note.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "wake-up listener lost its connection (%s); reconnecting", type(exc).__name__
                )
                await self._clock.sleep(RECONNECT_DELAY_S)


def _due(payload: str) -> datetime | None:
    try:
        return datetime.fromisoformat(payload)
    except ValueError:
        return None
