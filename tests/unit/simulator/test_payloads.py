from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chatbuffer.simulator import payloads

AT = datetime(2026, 8, 14, 10, 2, 11, 250_000, tzinfo=UTC)
WHERE: payloads.ConversationArgs = {"account_id": 1, "conversation_id": 1532}

# Field lists from docs/chatwoot.md §1.2-§1.4.
MESSAGE_KEYS = {
    "event",
    "id",
    "content",
    "content_type",
    "content_attributes",
    "message_type",
    "private",
    "source_id",
    "created_at",
    "additional_attributes",
    "sender",
    "account",
    "inbox",
    "conversation",
}
CONTACT_KEYS = {
    "account",
    "additional_attributes",
    "avatar",
    "custom_attributes",
    "email",
    "id",
    "identifier",
    "name",
    "phone_number",
    "thumbnail",
    "blocked",
}
CONVERSATION_KEYS = {
    "id",
    "inbox_id",
    "channel",
    "status",
    "can_reply",
    "contact_inbox",
    "messages",
    "labels",
    "meta",
    "additional_attributes",
    "custom_attributes",
    "snoozed_until",
    "unread_count",
    "first_reply_created_at",
    "priority",
    "waiting_since",
    "agent_last_seen_at",
    "contact_last_seen_at",
    "last_activity_at",
    "timestamp",
    "created_at",
    "updated_at",
    "account",
}


def test_sign_matches_an_independent_hmac() -> None:
    body = json.dumps(payloads.incoming_text(message_id=1, content="oi", created_at=AT, **WHERE))
    raw = body.encode()

    headers = payloads.sign("s3cret", raw, 1_786_701_731)

    expected = hmac.new(b"s3cret", b"1786701731." + raw, hashlib.sha256).hexdigest()
    assert headers["X-Chatwoot-Signature"] == f"sha256={expected}"
    assert headers["X-Chatwoot-Timestamp"] == "1786701731"
    assert headers["Content-Type"] == "application/json"
    assert uuid.UUID(headers["X-Chatwoot-Delivery"]).version == 4


def test_sign_covers_the_timestamp() -> None:
    first = payloads.sign("s3cret", b"{}", 100)["X-Chatwoot-Signature"]
    second = payloads.sign("s3cret", b"{}", 101)["X-Chatwoot-Signature"]
    assert first != second


def test_incoming_text_has_the_webhook_shape() -> None:
    body = payloads.incoming_text(
        message_id=90812, content="hi, do you deliver on sunday?", created_at=AT, **WHERE
    )

    assert set(body) == MESSAGE_KEYS
    assert body["event"] == "message_created"
    assert body["message_type"] == "incoming"
    assert body["private"] is False
    assert body["content_type"] == "text"
    assert body["created_at"] == "2026-08-14T10:02:11.250Z"
    assert body["source_id"].startswith("wamid.")
    assert set(body["sender"]) == CONTACT_KEYS
    assert "type" not in body["sender"]
    assert body["sender"]["id"] == 77
    assert body["sender"]["phone_number"].startswith("+")
    assert body["account"] == {"id": 1, "name": payloads.ACCOUNT_NAME}
    assert body["inbox"] == {"id": 4, "name": payloads.INBOX_NAME}
    assert "attachments" not in body


def test_incoming_text_conversation_uses_display_id_and_push_format() -> None:
    body = payloads.incoming_text(message_id=90812, content="hi", created_at=AT, **WHERE)
    conversation = body["conversation"]

    assert set(conversation) == CONVERSATION_KEYS
    assert conversation["id"] == 1532
    assert conversation["status"] == "pending"
    assert conversation["channel"] == "Channel::Whatsapp"
    assert conversation["meta"]["sender"]["type"] == "contact"
    assert conversation["contact_inbox"]["source_id"] == body["sender"]["phone_number"][1:]
    [last] = conversation["messages"]
    assert last["id"] == 90812
    assert last["message_type"] == 0
    assert last["created_at"] == int(AT.timestamp())
    assert last["conversation_id"] == 1532
    assert last["sender_type"] == "Contact"


def test_builders_take_conversation_overrides() -> None:
    body = payloads.incoming_text(
        message_id=5,
        content="hi",
        created_at=AT,
        account_id=9,
        conversation_id=3,
        status="open",
        contact_id=12,
        contact_name="Bia",
        inbox_id=8,
        channel="Channel::Api",
    )

    assert body["conversation"]["status"] == "open"
    assert body["conversation"]["channel"] == "Channel::Api"
    assert body["sender"]["name"] == "Bia"
    assert body["sender"]["id"] == 12
    assert body["inbox"]["id"] == 8
    assert body["account"]["id"] == 9


def test_audio_attachment_carries_a_transcript() -> None:
    body = payloads.incoming_attachment(
        message_id=7,
        created_at=AT,
        file_type="audio",
        data_url="https://chatwoot.test/rails/active_storage/blobs/redirect/x/voice.ogg",
        transcribed_text="where is my order",
        event="message_updated",
        **WHERE,
    )

    assert body["event"] == "message_updated"
    assert body["content"] is None
    [attachment] = body["attachments"]
    assert attachment["file_type"] == "audio"
    assert attachment["transcribed_text"] == "where is my order"
    assert attachment["thumb_url"] == ""
    assert {"id", "message_id", "account_id", "extension", "content_type", "data_url"} <= set(
        attachment
    )
    assert attachment["message_id"] == 7
    assert body["conversation"]["messages"][0]["attachments"] == body["attachments"]


@pytest.mark.parametrize("file_type", ["image", "file"])
def test_non_audio_attachments_have_no_transcript(file_type: payloads.FileType) -> None:
    body = payloads.incoming_attachment(
        message_id=7,
        created_at=AT,
        file_type=file_type,
        data_url="https://chatwoot.test/blob",
        content="caption",
        **WHERE,
    )

    [attachment] = body["attachments"]
    assert "transcribed_text" not in attachment
    assert body["content"] == "caption"
    assert (attachment["thumb_url"] != "") == (file_type == "image")


def test_agent_reply_has_a_user_sender() -> None:
    body = payloads.agent_reply(message_id=8, content="on it", created_at=AT, **WHERE)

    assert body["message_type"] == "outgoing"
    assert body["sender"] == {
        "id": 3,
        "name": "Bruno",
        "email": "bruno@acme.test",
        "type": "user",
    }
    assert body["conversation"]["messages"][0]["message_type"] == 1


def test_phone_echo_has_no_sender_and_is_marked() -> None:
    body = payloads.phone_echo(message_id=9, content="sent from phone", created_at=AT, **WHERE)

    assert body["message_type"] == "outgoing"
    assert body["sender"] is None
    assert body["content_attributes"] == {"external_echo": True}
    assert "sender" not in body["conversation"]["messages"][0]


def test_bot_reply_has_an_agent_bot_sender_and_attributes() -> None:
    body = payloads.bot_reply(
        message_id=10,
        content="Hi!",
        created_at=AT,
        content_attributes={"chatbuffer": {"batch": "b1"}},
        **WHERE,
    )

    assert body["sender"] == {"id": 1, "name": "Chatbuffer", "type": "agent_bot"}
    assert body["content_attributes"] == {"chatbuffer": {"batch": "b1"}}
    assert body["source_id"] is None


def test_private_note_is_private_and_not_listed_as_last_message() -> None:
    body = payloads.private_note(message_id=11, content="vip", created_at=AT, **WHERE)

    assert body["private"] is True
    assert body["sender"]["type"] == "user"
    assert body["conversation"]["messages"] == []


def test_conversation_status_changed() -> None:
    body = payloads.conversation_status_changed(status="open", **WHERE)

    assert body["event"] == "conversation_status_changed"
    assert body["status"] == "open"
    assert body["id"] == 1532
    assert body["changed_attributes"] is None
    assert set(body) >= CONVERSATION_KEYS

    with_previous = payloads.conversation_status_changed(
        status="open", previous_status="pending", **WHERE
    )
    assert with_previous["changed_attributes"] == [
        {"status": {"previous_value": "pending", "current_value": "open"}}
    ]


def test_timestamps_are_normalised_to_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=-3)))
    body = payloads.incoming_text(message_id=1, content="x", created_at=local, **WHERE)
    assert body["created_at"] == "2026-08-14T10:02:11.250Z"


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        payloads.incoming_text(
            message_id=1, content="x", created_at=AT.replace(tzinfo=None), **WHERE
        )


def test_builders_are_pure() -> None:
    def build() -> dict[str, object]:
        return payloads.incoming_text(message_id=1, content="x", created_at=AT, **WHERE)

    assert build() == build()
    json.dumps(build())
