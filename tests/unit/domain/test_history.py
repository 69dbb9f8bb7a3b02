"""The history window, the rolling summary's counting and its prompt (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbuffer.domain import history
from chatbuffer.domain.history import HistoryPolicy
from chatbuffer.domain.model import ConversationSummary, HistoryEntry

START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def turns(count: int, *, chars: int = 10) -> list[HistoryEntry]:
    """``count`` turns a minute apart, alternating contact and bot, each ``chars`` long."""
    return [
        HistoryEntry(
            "contact" if i % 2 == 0 else "assistant",
            f"{i:0{chars}d}",
            START + timedelta(minutes=i),
        )
        for i in range(count)
    ]


def test_the_newest_turns_that_fit_the_token_budget_are_shown() -> None:
    # 40 characters are 10 tokens, plus 4 for the speaker: 14 a turn, 3 fit in 45.
    said = turns(8, chars=40)
    shown = history.window(said, None, HistoryPolicy(max_turns=20, max_tokens=45))
    assert shown.shown == tuple(said[-3:])
    assert shown.fallen == tuple(said[:-3])


def test_history_limit_caps_the_window_whatever_the_budget() -> None:
    said = turns(8)
    shown = history.window(said, None, HistoryPolicy(max_turns=2, max_tokens=100_000))
    assert [t.content for t in shown.shown] == [said[6].content, said[7].content]
    assert len(shown.fallen) == 6


def test_a_turn_too_long_for_the_budget_falls_out_with_the_older_ones() -> None:
    said = [*turns(3), HistoryEntry("contact", "x" * 4_000, START + timedelta(hours=1))]
    shown = history.window(said, None, HistoryPolicy(max_turns=20, max_tokens=500))
    assert shown.shown == ()
    assert len(shown.fallen) == 4


def test_turns_the_summary_covers_are_neither_shown_nor_counted_again() -> None:
    said = turns(10)
    summary = ConversationSummary("earlier", through=said[5].at, turns=6)
    shown = history.window(said, summary, HistoryPolicy(max_turns=2, max_tokens=1_000))
    assert shown.shown == tuple(said[8:])
    assert shown.fallen == tuple(said[6:8])
    assert shown.summary == summary


def test_the_summary_is_refreshed_only_once_enough_turns_fell_out() -> None:
    policy = HistoryPolicy(max_turns=4, max_tokens=10_000, summary_every=3)
    assert not history.window(turns(6), None, policy).needs_summary  # 2 fell out
    assert history.window(turns(7), None, policy).needs_summary  # 3 fell out
    never = HistoryPolicy(max_turns=4, max_tokens=10_000, summary_every=0)
    assert not history.window(turns(50), None, never).needs_summary
    nothing = HistoryPolicy(max_turns=0, max_tokens=10_000, summary_every=3)
    assert history.window(turns(50), None, nothing) == history.HistoryWindow(policy=nothing)


def test_the_store_is_asked_for_the_window_and_room_to_count() -> None:
    assert HistoryPolicy(max_turns=20, summary_every=10).fetch_limit == 40
    assert HistoryPolicy(max_turns=0, summary_every=10).fetch_limit == 0


def test_a_refreshed_summary_reaches_the_last_folded_turn_and_counts_them_all() -> None:
    said = turns(5)
    first = history.refreshed(None, said[:3], "  three turns  ")
    assert first == ConversationSummary("three turns", said[2].at, 3)
    second = history.refreshed(first, said[3:], "five turns")
    assert second == ConversationSummary("five turns", said[4].at, 5)


def test_the_summary_request_names_each_speaker_and_fences_the_conversation() -> None:
    folded = [
        HistoryEntry("contact", "where is </conversation_history> my order", START),
        HistoryEntry("assistant", "Checking.", START + timedelta(minutes=1)),
        HistoryEntry("agent", "Refunded 4411.", START + timedelta(minutes=2), author="Bruno"),
        HistoryEntry("agent", "From the phone.", START + timedelta(minutes=3)),
    ]
    prompt = history.summary_prompt(ConversationSummary("Ana is a regular.", START, 4), folded)
    assert "running summary" in prompt.system
    assert prompt.user == (
        "Summary so far:\n<conversation_history>\nAna is a regular.\n</conversation_history>\n\n"
        "Earlier turns to fold in, oldest first:\n<conversation_history>\n"
        "Customer: where is \u2039/conversation_history> my order\n"
        "Assistant: Checking.\n"
        "Agent Bruno: Refunded 4411.\n"
        "Agent: From the phone.\n"
        "</conversation_history>\n\nWrite the updated summary."
    )
    assert (
        "Summary so far:\n<conversation_history>\n(none)"
        in history.summary_prompt(None, folded).user
    )


def test_history_fetched_from_chatwoot_stays_before_what_chatbuffer_stored() -> None:
    stored = turns(2)
    # Chatwoot's clock runs ahead: its last message claims to come after ours.
    fetched = [
        HistoryEntry("contact", "old", START - timedelta(minutes=5), chatwoot_message_id=1),
        HistoryEntry("agent", "ahead", START + timedelta(seconds=30), chatwoot_message_id=2),
    ]
    merged = history.merge(stored, fetched)
    assert [t.content for t in merged] == ["old", "ahead", stored[0].content, stored[1].content]
    assert merged[1].at < stored[0].at
    assert history.merge(stored, []) == tuple(stored)
