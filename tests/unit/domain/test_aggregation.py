from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chatbuffer.domain import aggregation
from chatbuffer.domain.model import Attachment, ConversationKey, HistoryEntry, InboundMessage

KEY = ConversationKey(1, 42)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def msg(i: int, content: str | None, *attachments: Attachment, at: float = 0) -> InboundMessage:
    return InboundMessage(
        key=KEY,
        chatwoot_message_id=i,
        content=content,
        kind="text",
        content_type="text",
        received_at=T0 + timedelta(seconds=at),
        attachments=attachments,
        sender={"name": "Ana"},
        conversation={"channel": "Channel::Whatsapp"},
    )


def test_prompt_lists_the_burst_in_order_with_count_and_time_span() -> None:
    prompt = aggregation.build_prompt(
        [msg(1, "hi", at=0), msg(2, "I ordered last week", at=4), msg(3, "order 4411", at=9.5)],
        [],
    )
    assert "You are processing 3 WhatsApp messages received over 9500ms." in prompt.user
    lines = [line for line in prompt.user.splitlines() if line.startswith("- ")]
    assert lines == ["- hi", "- I ordered last week", "- order 4411"]
    assert '"shouldRespond": boolean' in prompt.user
    assert '"name": "Ana"' in prompt.user


def test_voice_notes_images_and_files_are_described_in_place() -> None:
    voice = Attachment(file_type="audio", transcript="it still has not arrived")
    silent = Attachment(file_type="audio")
    photo = Attachment(file_type="image", data_url="https://cw.example/img.jpg")
    prompt = aggregation.build_prompt(
        [msg(1, None, voice), msg(2, "see this", photo), msg(3, None, silent)], []
    )
    assert "- [voice note] it still has not arrived" in prompt.user
    assert "- [image https://cw.example/img.jpg] see this" in prompt.user
    assert f"- [voice note] {aggregation.NO_TRANSCRIPT}" in prompt.user
    audio_section = prompt.user.split("Audio transcripts:\n", 1)[1].split("\n\n", 1)[0]
    assert audio_section.splitlines() == [
        "- it still has not arrived",
        f"- {aggregation.NO_TRANSCRIPT}",
    ]


def test_history_is_included_unless_switched_off() -> None:
    voice = Attachment(file_type="audio", data_url="https://cw/a.ogg", transcript="order 4411")
    history = [
        HistoryEntry("contact", "where is my order?", T0 - timedelta(hours=1)),
        HistoryEntry("contact", None, T0 - timedelta(hours=1), (voice,)),
        HistoryEntry("assistant", "It ships tomorrow.", T0 - timedelta(minutes=59)),
    ]
    with_history = aggregation.build_prompt([msg(1, "still nothing")], history)
    past = with_history.user.split("Recent conversation history:\n", 1)[1].split("\n\n", 1)[0]
    assert past.splitlines() == [
        "Customer: where is my order?",
        "Customer: [voice note] order 4411",
        "You: It ships tomorrow.",
    ]
    without = aggregation.build_prompt([msg(1, "still nothing")], history, include_history=False)
    assert "where is my order?" not in without.user


def test_an_empty_burst_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        aggregation.build_prompt([], [])
