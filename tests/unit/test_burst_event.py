"""The burst as one event for an operator's own agent."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]

from chatbuffer.burst_webhook.client import signature
from chatbuffer.domain.aggregation import PromptInputs
from chatbuffer.domain.burst_event import burst_event
from chatbuffer.domain.model import (
    Attachment,
    AttachmentContent,
    ConversationKey,
    HistoryEntry,
    InboundMessage,
    InlineImage,
)

KEY = ConversationKey(1, 1532)
AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "docs" / "schemas" / "burst-event.schema.json"
    ).read_text()
)


def _message(message_id: int, content: str | None, *attachments: Attachment) -> InboundMessage:
    return InboundMessage(
        key=KEY,
        chatwoot_message_id=message_id,
        content=content,
        kind="audio" if attachments and attachments[0].file_type == "audio" else "text",
        content_type="text",
        received_at=AT,
        attachments=attachments,
        sender={"id": 77, "name": "Ana"},
        conversation={"id": 1532, "inbox_id": 4},
    )


def test_every_message_attachment_and_turn_is_in_the_event_as_data() -> None:
    photo = Attachment(file_type="image", data_url="https://cw/p.jpg", content_type="image/jpeg")
    voice = Attachment(file_type="audio", data_url="https://cw/a.ogg", transcript="where is it")
    inputs = PromptInputs(
        messages=[_message(1, "hi", photo), _message(2, None, voice)],
        history=[HistoryEntry("assistant", "Hello!", AT)],
        contents={(1, 0): AttachmentContent(image=InlineImage("image/jpeg", b"\xff\xd8"))},
        instructions="We sell shoes.",
    )
    buffer_id = uuid.uuid4()
    event = burst_event(KEY, buffer_id, inputs)
    jsonschema.validate(event, SCHEMA)
    assert event["buffer_id"] == str(buffer_id)
    assert (event["inbox_id"], event["contact"]["name"]) == (4, "Ana")
    [first, second] = event["messages"]
    assert first["attachments"][0]["image"] == "data:image/jpeg;base64,/9g="
    assert second["attachments"][0]["transcript"] == "where is it"
    assert event["history"] == [{"role": "assistant", "content": "Hello!", "at": AT.isoformat()}]
    assert event["instructions"] == "We sell shoes."


def test_history_stays_out_when_the_flag_keeps_it_from_the_model() -> None:
    inputs = PromptInputs(
        messages=[_message(1, "hi")],
        history=[HistoryEntry("contact", "old", AT)],
        include_history=False,
    )
    assert burst_event(KEY, uuid.uuid4(), inputs)["history"] == []


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    # Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
    assert signature("s3cret", "1700000000", b'{"a":1}') == (
        "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
    )
    assert signature("s3cret", "1700000001", b'{"a":1}') != signature(
        "s3cret", "1700000000", b'{"a":1}'
    )
