"""Feature flags: typed, asked per conversation, read from their source at most every 5 s."""

from __future__ import annotations

from datetime import timedelta

from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey
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
