"""Waiting on tasks with a timeout measured by the injected ``Clock``, not the event loop's.

``asyncio.wait(..., timeout=...)`` measures real time, so a test with ``FakeClock`` could not
drive it; these race the tasks against ``clock.sleep`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any, TypeVar

from chatbuffer.domain.ports import Clock

T = TypeVar("T", bound=asyncio.Future[Any])


async def wait_any(clock: Clock, tasks: Collection[asyncio.Future[Any]], seconds: float) -> None:
    """Return once one of ``tasks`` is done or ``seconds`` have passed on ``clock``."""
    timer: asyncio.Future[Any] = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({timer, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer


async def wait_all(clock: Clock, tasks: Collection[T], seconds: float) -> set[T]:
    """Wait until every task is done or ``seconds`` have passed; return the unfinished ones."""
    pending = {t for t in tasks if not t.done()}
    timer: asyncio.Future[Any] = asyncio.ensure_future(clock.sleep(seconds))
    try:
        while pending and not timer.done():
            waiting: set[asyncio.Future[Any]] = {timer, *pending}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in pending if not t.done()}
    finally:
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
    return pending
