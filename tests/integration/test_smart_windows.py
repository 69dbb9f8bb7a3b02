"""The smart windows' memory on each database, and its in-memory double, keep the same state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import WindowStates
from chatbuffer.domain.smart_window import (
    MessageShape,
    WindowPolicy,
    WindowState,
    advance,
    shape_of,
)
from chatbuffer.storage import database
from chatbuffer.storage.smart_windows import SqlWindowStates
from chatbuffer.testing import MemoryWindowStates
from tests.conftest import _database_url

KEY = ConversationKey(3, 41)
OTHER = ConversationKey(3, 42)
POLICY = WindowPolicy(base_ms=30_000, min_ms=5_000, learn=True, fast_track=True, voice_wait=True)
START_MS = 1_780_000_000_000.0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def states(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WindowStates]:
    if request.param == "memory":
        yield MemoryWindowStates()
        return
    engine = database.create_engine(_database_url(request.param, request, tmp_path), pool_size=5)
    try:
        yield SqlWindowStates(engine)
    finally:
        await engine.dispose()


async def test_a_new_conversation_starts_from_an_empty_state(states: WindowStates) -> None:
    seen: list[WindowState] = []

    def change(state: WindowState) -> WindowState:
        seen.append(state)
        return state

    assert await states.update(KEY, change) == WindowState()
    assert seen == [WindowState()]


async def test_the_state_is_kept_per_conversation_as_the_domain_computed_it(
    states: WindowStates,
) -> None:
    shapes = [shape_of("x" * 120), shape_of("hello"), MessageShape(0, voice_pending=True)]
    expected = WindowState()
    for n, shape in enumerate(shapes, start=1):
        at = START_MS + n * 2_500

        def step(
            state: WindowState, n: int = n, at: float = at, shape: MessageShape = shape
        ) -> WindowState:
            return advance(state, n, at, shape, POLICY)

        expected = step(expected)
        assert await states.update(KEY, step) == expected
    # Read back through a no-op change: timestamps survive the round trip to the millisecond.
    stored = await states.update(KEY, lambda s: s)
    assert stored.burst == expected.burst
    assert stored.rhythm.samples == 2
    assert stored.rhythm.mean_ms == pytest.approx(expected.rhythm.mean_ms)
    assert stored.last_message_id == 3
    assert stored.last_message_at_ms == pytest.approx(expected.last_message_at_ms, abs=1)
    assert stored.closes_at_ms == pytest.approx(expected.closes_at_ms, abs=1)
    assert stored.quiet_ms == expected.quiet_ms
    assert await states.update(OTHER, lambda s: s) == WindowState()


async def test_concurrent_updates_of_one_conversation_apply_one_after_the_other(
    states: WindowStates,
) -> None:
    def next_message(state: WindowState) -> WindowState:
        n = (state.last_message_id or 0) + 1
        return advance(state, n, START_MS + n * 1_000, shape_of("hi"), POLICY)

    await asyncio.gather(*(states.update(KEY, next_message) for _ in range(12)))
    final = await states.update(KEY, lambda s: s)
    assert final.last_message_id == 12
    assert len(final.burst) == 12
    assert final.rhythm.samples == 11
