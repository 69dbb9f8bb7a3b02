"""Feature flags: typed, asked per conversation, read from their source at most every 5 s."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta

import pytest

from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
from chatbuffer.errors import StorageUnavailable
from chatbuffer.flags import CachedFlags
from chatbuffer.testing import FakeClock, MemoryStore

KEY = ConversationKey(1, 42)


async def test_a_change_is_seen_once_the_cached_copy_is_five_seconds_old() -> None:
    clock = FakeClock()
    store = MemoryStore()
    flags = CachedFlags(store, clock)
    assert await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
    store.flag_rows["typing_indicators"] = False
    clock.advance(5)
    assert await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
    clock.advance(timedelta(milliseconds=1))
    assert not await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)


async def test_a_missing_row_is_the_seeded_value_and_unknown_rows_are_ignored() -> None:
    store = MemoryStore(flag_rows={"some_future_flag": True})
    flags = CachedFlags(store, FakeClock())
    assert await flags.is_enabled(Flag.MESSAGE_BUFFERING, KEY)
    assert not await flags.is_enabled(Flag.RESPONSE_QUALITY_ENHANCEMENT, KEY)


async def test_callers_that_find_the_copy_stale_together_share_one_read() -> None:
    class CountingSource(MemoryStore):
        reads = 0

        async def flags(self) -> dict[str, bool]:
            CountingSource.reads += 1
            await asyncio.sleep(0)
            return dict(await super().flags())

    flags = CachedFlags(CountingSource(), FakeClock())
    answers = await asyncio.gather(
        *(flags.is_enabled(Flag.TYPING_INDICATORS, KEY) for _ in range(50))
    )
    assert answers == [True] * 50
    assert CountingSource.reads == 1


async def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    store = MemoryStore()
    failing = True

    async def flaky() -> Mapping[str, bool]:
        if failing:
            raise StorageUnavailable("database down")
        return {"typing_indicators": False}

    store.flags = flaky  # type: ignore[method-assign]
    flags = CachedFlags(store, FakeClock())
    with pytest.raises(StorageUnavailable):
        await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
    failing = False
    assert not await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
