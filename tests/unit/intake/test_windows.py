"""``SmartWindows``: live flags choose the rules, per inbox; nothing is kept while all are off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.control import Controls
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.domain.smart_window import WindowPolicy
from chatbuffer.intake.windows import SmartWindows
from chatbuffer.testing import MemoryWindowStates

BASE = BufferPolicy(timedelta(seconds=30), timedelta(seconds=300), 50)
BOUNDS = WindowPolicy(base_ms=30_000, fast_track_ms=6_000)
AT = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
FAST = Controls(flags={Flag.SMART_WINDOW_FAST_TRACK: True})


def message(n: int, text: str, inbox: int = 1) -> InboundMessage:
    return InboundMessage(
        key=ConversationKey(1, 9),
        chatwoot_message_id=n,
        content=text,
        kind="text",
        content_type="text",
        received_at=AT + timedelta(seconds=n),
        conversation={"inbox_id": inbox},
    )


async def test_with_every_flag_off_the_fixed_window_holds_and_nothing_is_kept() -> None:
    states = MemoryWindowStates()
    windows = SmartWindows(states, BOUNDS)
    assert await windows.policy(message(1, "block my card now?"), BASE, Controls()) is BASE
    assert states.states == {}


async def test_an_urgent_question_is_fast_tracked_and_a_calm_one_is_not() -> None:
    windows = SmartWindows(MemoryWindowStates(), BOUNDS)
    urgent = await windows.policy(
        message(1, "URGENT my card was stolen, block it right now!!?"), BASE, FAST
    )
    assert urgent.quiet_period == timedelta(seconds=6)
    calm = SmartWindows(MemoryWindowStates(), BOUNDS)
    assert (await calm.policy(message(1, "are you open?"), BASE, FAST)).quiet_period == (
        BASE.quiet_period
    )


async def test_a_flag_set_for_one_inbox_applies_there_only() -> None:
    controls = Controls(inbox_flags={(Flag.SMART_WINDOW_FAST_TRACK, 7): True})
    text = "I bought the blue jacket last week and the tracking page shows nothing"
    for inbox, expected in ((7, 6), (8, 30)):
        windows = SmartWindows(MemoryWindowStates(), BOUNDS)
        await windows.policy(message(1, text + " at all, nothing", inbox), BASE, controls)
        second = await windows.policy(message(2, "where is it?", inbox), BASE, controls)
        assert second.quiet_period == timedelta(seconds=expected), inbox
