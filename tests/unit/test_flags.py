"""Live controls: flags typed, asked per conversation, read from their source at most every 5 s."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import StoredControls
from chatbuffer.errors import StorageUnavailable
from chatbuffer.flags import CachedControls
from chatbuffer.testing import FakeClock, MemoryControls

KEY = ConversationKey(1, 42)


async def test_a_change_is_seen_once_the_cached_copy_is_five_seconds_old() -> None:
    clock = FakeClock()
    store = MemoryControls()
    flags = CachedControls(store, clock)
    assert await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
    store.flag_rows["typing_indicators"] = False
    clock.advance(5)
    assert await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
    clock.advance(timedelta(milliseconds=1))
    assert not await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)


async def test_a_missing_row_is_the_seeded_value_and_unknown_rows_are_ignored() -> None:
    store = MemoryControls(flag_rows={"some_future_flag": True}, values={"future.thing": "x"})
    flags = CachedControls(store, FakeClock())
    assert await flags.is_enabled(Flag.MESSAGE_BUFFERING, KEY)
    assert not await flags.is_enabled(Flag.RESPONSE_QUALITY_ENHANCEMENT, KEY)


async def test_callers_that_find_the_copy_stale_together_share_one_read() -> None:
    class SlowSource(MemoryControls):
        async def read_controls(self) -> StoredControls:
            await asyncio.sleep(0)
            return await super().read_controls()

    source = SlowSource()
    flags = CachedControls(source, FakeClock())
    answers = await asyncio.gather(
        *(flags.is_enabled(Flag.TYPING_INDICATORS, KEY) for _ in range(50))
    )
    assert answers == [True] * 50
    assert source.reads == 1


async def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    store = MemoryControls()
    failing = True

    async def flaky() -> StoredControls:
        if failing:
            raise StorageUnavailable("database down")
        return StoredControls(flags={"typing_indicators": False}, values={})

    store.read_controls = flaky  # type: ignore[method-assign]
    flags = CachedControls(store, FakeClock())
    with pytest.raises(StorageUnavailable):
        await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
    failing = False
    assert not await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)


async def test_an_inbox_of_its_own_wins_over_the_global_value_and_others_keep_it() -> None:
    store = MemoryControls()
    flags = CachedControls(store, FakeClock())
    await store.set_values({"flag.typing_indicators.inbox.7": "off"})
    assert not await flags.is_enabled(Flag.TYPING_INDICATORS, KEY, inbox_id=7)
    assert await flags.is_enabled(Flag.TYPING_INDICATORS, KEY, inbox_id=8)
    assert await flags.is_enabled(Flag.TYPING_INDICATORS, KEY)
