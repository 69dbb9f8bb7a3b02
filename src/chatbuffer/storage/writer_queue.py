"""The queue behind a SQLite writer thread (intake's and the worker's): what the thread takes
into its next transaction."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def next_group(
    waiting: queue.SimpleQueue[T],
    lock: threading.Lock,
    *,
    idle_s: float,
    max_group: int,
    stop: Callable[[], None],
) -> list[T] | None:
    """Every request waiting now (at least one, at most ``max_group``), or None once idle for
    ``idle_s``; ``stop`` then marks the thread ended, under ``lock`` so that a request queued
    at that moment starts a new thread instead of waiting for this one."""
    while True:
        try:
            first = waiting.get(timeout=idle_s)
            break
        except queue.Empty:
            with lock:
                if waiting.empty():
                    stop()
                    return None
    group = [first]
    while len(group) < max_group:
        try:
            group.append(waiting.get_nowait())
        except queue.Empty:
            break
    return group
