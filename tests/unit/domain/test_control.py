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
