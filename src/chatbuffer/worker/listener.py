"""PostgreSQL LISTEN: turns other processes' NOTIFYs into local wake-ups."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import psycopg

from chatbuffer.domain.ports import Clock
from chatbuffer.storage.repository import WAKE_CHANNEL
from chatbuffer.worker.waker import Waker

logger = logging.getLogger(__name__)

RECONNECT_DELAY_S = 1.0


async def listen(conninfo: str, waker: Waker, clock: Clock, stop: asyncio.Event) -> None:
    """Hold one dedicated connection in LISTEN until ``stop``; reconnect when it drops.

    A session connection is needed: LISTEN does not survive a transaction-pooling proxy.
    """
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                # Anything notified while we were not listening is found by a fresh scan.
                waker.poke()
                async for note in conn.notifies():
                    waker.poke(_due(note.payload))
                    if stop.is_set():
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "wake-up listener lost its connection (%s); reconnecting", type(exc).__name__
            )
            await clock.sleep(RECONNECT_DELAY_S)


def _due(payload: str) -> datetime | None:
    try:
        return datetime.fromisoformat(payload)
    except ValueError:
        return None
