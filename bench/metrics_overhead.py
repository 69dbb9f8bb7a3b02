"""What measuring costs a webhook delivery: the intake's outcome count plus the store call's timing
(``MeasuredIntake`` around a handler that calls a ``MeasuredStore``), against the bare calls.

    uv run python bench/metrics_overhead.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from chatbuffer.clock import SystemClock
from chatbuffer.observability.measured import MeasuredIntake, MeasuredStore
from chatbuffer.observability.metrics import Metrics

CALLS = 200_000


class Store:
    async def record_incoming(self, value: int) -> int:
        return value


async def main() -> None:
    clock = SystemClock()
    metrics = Metrics(clock)
    store = Store()
    measured: Any = MeasuredStore(store, metrics, clock)

    async def bare(_body: object) -> Mapping[str, Any]:
        await store.record_incoming(1)
        return {"status": "buffered"}

    async def timed(_body: object) -> Mapping[str, Any]:
        await measured.record_incoming(1)
        return {"status": "buffered"}

    runs: list[tuple[str, Callable[[object], Awaitable[Mapping[str, Any]]]]] = [
        ("bare", bare),
        ("measured", MeasuredIntake(timed, metrics)),
    ]
    for name, call in runs * 2:
        start = time.perf_counter()
        for _ in range(CALLS):
            await call({})
        print(f"{name:9} {(time.perf_counter() - start) / CALLS * 1e6:.2f} µs per delivery")


if __name__ == "__main__":
    asyncio.run(main())
