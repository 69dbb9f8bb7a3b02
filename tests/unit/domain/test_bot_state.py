"""A conversation's bot state: what wins, and how an operator reads it (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbuffer.domain import bot_state
from chatbuffer.domain.bot_state import BotState, StoredState

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_no_row_and_no_pause_is_active() -> None:
    state = bot_state.current(None, None, NOW)
    assert state == BotState("active")
    assert state.acts
    assert bot_state.describe(state) == "active"


def test_a_human_pause_holds_until_it_runs_out() -> None:
    until = NOW + timedelta(minutes=30)
    paused = bot_state.current(None, until, NOW)
    assert paused.mode == "paused" and paused.until == until and not paused.acts
    assert bot_state.describe(paused) == "paused by a human until 2026-12-03T12:30:00+00:00"
    assert bot_state.current(None, until, until).mode == "active"


def test_a_hand_off_wins_over_a_pause_and_says_why_and_since_when() -> None:
    stored = StoredState("handed_off", NOW - timedelta(hours=1), "handed off: control_word")
    state = bot_state.current(stored, NOW + timedelta(minutes=5), NOW)
    assert state.mode == "handed_off" and not state.acts
    assert bot_state.describe(state) == (
        "handed off since 2026-12-03T11:00:00+00:00: handed off: control_word"
    )


def test_off_is_shown_with_the_operators_reason() -> None:
    state = bot_state.current(StoredState("off", NOW, "vip customer"), None, NOW)
    assert bot_state.describe(state) == "off since 2026-12-03T12:00:00+00:00: vip customer"


def test_a_resumed_conversation_is_active_and_says_so() -> None:
    state = bot_state.current(StoredState("active", NOW, "resumed by an operator"), None, NOW)
    assert state.acts
    assert bot_state.describe(state) == (
        "active since 2026-12-03T12:00:00+00:00 (resumed by an operator)"
    )
