"""The rollout and per-inbox flags, decided per conversation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from chatbuffer.domain import control
from chatbuffer.domain.control import Controls, Subject
from chatbuffer.domain.model import ConversationKey, InboundMessage

CONVERSATIONS = [Subject(ConversationKey(3, c)) for c in range(1, 1001)]


def _at(percent: str, **values: str) -> Controls:
    return control.parse({}, {control.ROLLOUT_PERCENT: percent, **values})


def test_thirty_percent_puts_about_thirty_percent_on_the_buffered_path() -> None:
    buffered = sum(_at("30").buffered(s) for s in CONVERSATIONS)
    assert 270 <= buffered <= 330


def test_raising_the_percentage_only_moves_conversations_onto_the_buffered_path() -> None:
    steps = ["0", "5", "30", "31", "50", "99.5", "100"]
    chosen = [{s.key for s in CONVERSATIONS if _at(p).buffered(s)} for p in steps]
    assert chosen[0] == set()
    assert chosen[-1] == {s.key for s in CONVERSATIONS}
    for smaller, larger in itertools.pairwise(chosen):
        assert smaller <= larger


def test_a_conversation_keeps_its_bucket_across_calls_and_processes() -> None:
    # A fixed value: a salted hash (Python's hash()) would differ between processes and releases.
    assert control.bucket(ConversationKey(1, 1532)) == 9566


def test_canaries_are_always_buffered_and_buffering_off_wins_over_everything() -> None:
    controls = _at("0", **{"rollout.canary.inbox:4": "on", "rollout.canary.contact:9": "on"})
    key = ConversationKey(1, 1)
    assert controls.buffered(Subject(key, inbox_id=4))
    assert controls.buffered(Subject(key, inbox_id=5, contact_id=9))
    assert not controls.buffered(Subject(key, inbox_id=5, contact_id=10))
    off = control.parse({"message_buffering": False}, {"rollout.canary.inbox:4": "on"})
    assert not off.buffered(Subject(key, inbox_id=4))
    per_inbox = control.parse({}, {"flag.message_buffering.inbox.4": "off"})
    assert not per_inbox.buffered(Subject(key, inbox_id=4))
    assert per_inbox.buffered(Subject(key, inbox_id=5))


def test_values_this_version_does_not_know_are_ignored() -> None:
    controls = control.parse(
        {"future_flag": True},
        {
            "flag.future_flag.inbox.3": "on",
            "flag.typing_indicators.inbox.3": "maybe",
            "rollout.percent": "lots",
            "rollout.canary.team:3": "on",
            "something.else": "x",
        },
    )
    assert controls == Controls()


@pytest.mark.parametrize("text", ["-1", "101", "half", ""])
def test_a_percentage_outside_0_to_100_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="a percentage is a number from 0 to 100"):
        control.percent_value(text)


@pytest.mark.parametrize("text", ["inbox", "inbox:x", "team:3", "contact:-1"])
def test_a_canary_is_inbox_or_contact_with_a_number(text: str) -> None:
    with pytest.raises(ValueError, match="a canary is inbox:ID or contact:ID"):
        control.canary_name(text)


def test_subject_reads_the_inbox_and_contact_chatwoot_sent() -> None:
    message = InboundMessage(
        key=ConversationKey(1, 2),
        chatwoot_message_id=5,
        content="hi",
        kind="text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        sender={"id": 77, "name": "Ana"},
        conversation={"inbox_id": 4},
    )
    assert control.subject_of(message) == Subject(ConversationKey(1, 2), 4, 77)


def test_the_pause_and_shadow_rows_read_back_with_who_and_when() -> None:
    from datetime import UTC, datetime

    from chatbuffer.domain.control import (
        ROLLOUT_SHADOW,
        parse,
        pause_values,
        resume_values,
    )

    at = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    rows = {k: v for k, v in pause_values("ana", at).items() if v is not None}
    paused = parse({}, {**rows, ROLLOUT_SHADOW: "on"})
    assert paused.shadow and paused.pause.paused
    assert (paused.pause.paused_by, paused.pause.paused_at) == ("ana", at)
    later = at.replace(hour=11)
    for name, value in resume_values("bo", later).items():
        if value is None:
            rows.pop(name, None)
        else:
            rows[name] = value
    resumed = parse({}, rows).pause
    assert not resumed.paused
    assert (resumed.resumed_by, resumed.resumed_at, resumed.paused_by) == ("bo", later, "ana")
    # Unreadable instants are ignored, as any row this version cannot read.
    assert parse({}, {"pause.resumed_at": "yesterday"}).pause.resumed_at is None
    assert parse({}, {"pause.resumed_at": "2026-12-03T10:00:00"}).pause.resumed_at is None


def test_a_burst_is_stale_only_if_it_was_due_before_the_resume_and_is_old_enough() -> None:
    from datetime import UTC, datetime, timedelta

    from chatbuffer.domain.control import PauseState, stale_after_pause

    resumed = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    pause = PauseState(resumed_at=resumed)
    ten = timedelta(minutes=10)

    def stale(state: PauseState, due: timedelta, last: timedelta, now: timedelta) -> bool:
        return stale_after_pause(
            state,
            due_at=resumed + due,
            last_message_at=resumed + last,
            now=resumed + now,
            stale_after=ten,
        )

    assert stale(pause, -ten, -ten - ten, timedelta(seconds=5))
    assert not stale(pause, -ten, -ten + timedelta(seconds=10), timedelta(seconds=5))
    # Due after the resume (a replay): answered.
    assert not stale(pause, timedelta(seconds=1), -ten * 3, timedelta(seconds=5))
    # Never paused, or still paused: nothing is stale.
    assert not stale(PauseState(), -ten, -ten * 3, timedelta(0))
    assert not stale(PauseState(paused=True, resumed_at=resumed), -ten, -ten * 3, timedelta(0))


def test_shadow_ids_are_stable_per_buffer_and_kind_and_never_a_chatwoot_id() -> None:
    import uuid

    from chatbuffer.domain.marker import Marker
    from chatbuffer.domain.shadow import SHADOW_IDS_FROM, is_shadow, shadow_message_id

    buffer = uuid.uuid4()
    reply = shadow_message_id(Marker(buffer, "reply"))
    note = shadow_message_id(Marker(buffer, "handoff_note"))
    assert reply == shadow_message_id(Marker(buffer, "reply")) and reply != note
    assert is_shadow(reply) and is_shadow(note) and reply < 2**53
    assert not is_shadow(None) and not is_shadow(12345) and not is_shadow(SHADOW_IDS_FROM - 1)
