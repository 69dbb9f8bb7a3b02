"""Chatwoot webhook bodies, built the way Chatwoot v4.16 builds them.

Shapes follow ``docs/chatwoot.md`` §1 (read from Chatwoot's ``Message#webhook_data`` and
``Conversations::EventDataPresenter``). Two encodings coexist on purpose, as in the real payloads:
the top-level message uses string ``message_type`` and ISO ``created_at``, while
``conversation.messages[0]`` uses the "push" encoding (integer ``message_type``, unix
``created_at``).

Every builder is pure: times come in as aware datetimes and nothing reads the clock.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Required, TypedDict, Unpack

ACCOUNT_NAME = "Acme"
INBOX_NAME = "WhatsApp Sales"
FileType = Literal["audio", "image", "file"]
MessageEvent = Literal["message_created", "message_updated"]

# Used only where Chatwoot would put a timestamp but the caller gave none (status events), so the
# output stays deterministic.
_REFERENCE_TIME = datetime(2026, 8, 14, 10, 0, tzinfo=UTC)

# Push-format integers from Chatwoot's Message enum.
_PUSH_MESSAGE_TYPE = {"incoming": 0, "outgoing": 1}

# extension, MIME type, width, height per simulated file type; WhatsApp voice notes are OGG/Opus.
_FILE_DETAILS: dict[str, tuple[str, str, int | None, int | None]] = {
    "audio": ("ogg", "audio/ogg", None, None),
    "image": ("jpg", "image/jpeg", 1280, 960),
    "file": ("pdf", "application/pdf", None, None),
}


class ConversationArgs(TypedDict, total=False):
    """Identifies the conversation; everything but the two ids has a realistic default."""

    account_id: Required[int]
    conversation_id: Required[int]  # display_id, the one the REST API uses
    contact_id: int  # default 77
    contact_name: str  # default "Ana"
    inbox_id: int  # default 4
    channel: str  # default "Channel::Whatsapp"
    contact_email: str  # default none
    contact_attributes: dict[str, Any]  # the contact's custom_attributes, default {}
    conversation_attributes: dict[str, Any]  # the conversation's custom_attributes, default {}
    labels: list[str]  # the conversation's labels, default []


class MessageArgs(ConversationArgs, total=False):
    """Conversation identity plus its status at delivery time."""

    status: str  # default "pending": bot-connected inboxes start conversations there


@dataclass(frozen=True, slots=True)
class _Conversation:
    account_id: int
    conversation_id: int
    status: str
    contact_id: int
    contact_name: str
    inbox_id: int
    channel: str
    contact_email: str | None = None
    contact_attributes: tuple[tuple[str, Any], ...] = ()
    conversation_attributes: tuple[tuple[str, Any], ...] = ()
    labels: tuple[str, ...] = ()

    @property
    def account(self) -> dict[str, Any]:
        return {"id": self.account_id, "name": ACCOUNT_NAME}

    @property
    def wa_id(self) -> str:
        # Deterministic per contact so repeated builds of one contact agree on its phone.
        return f"55119{self.contact_id:08d}"


@dataclass(frozen=True, slots=True)
class _Author:
    """Who wrote a message; ``kind=None`` is Chatwoot's sender-less message (echo, template)."""

    kind: Literal["contact", "user", "agent_bot"] | None
    id: int | None = None
    name: str = ""
    email: str | None = None


_NO_AUTHOR = _Author(kind=None)


def _conversation(args: ConversationArgs, status: str = "pending") -> _Conversation:
    return _Conversation(
        account_id=args["account_id"],
        conversation_id=args["conversation_id"],
        status=status,
        contact_id=args.get("contact_id", 77),
        contact_name=args.get("contact_name", "Ana"),
        inbox_id=args.get("inbox_id", 4),
        channel=args.get("channel", "Channel::Whatsapp"),
        contact_email=args.get("contact_email"),
        contact_attributes=tuple(args.get("contact_attributes", {}).items()),
        conversation_attributes=tuple(args.get("conversation_attributes", {}).items()),
        labels=tuple(args.get("labels", [])),
    )


def _message_conversation(args: MessageArgs) -> _Conversation:
    return _conversation(args, args.get("status", "pending"))


def _aware_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("webhook timestamps need a timezone-aware datetime")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    # Rails encodes TimeWithZone with millisecond precision and a literal Z.
    utc = _aware_utc(moment)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _unix(moment: datetime) -> int:
    return int(_aware_utc(moment).timestamp())


def _contact_webhook(conv: _Conversation) -> dict[str, Any]:
    return {
        "account": conv.account,
        "additional_attributes": {},
        "avatar": "",
        "custom_attributes": dict(conv.contact_attributes),
        "email": conv.contact_email,
        "id": conv.contact_id,
        "identifier": None,
        "name": conv.contact_name,
        "phone_number": f"+{conv.wa_id}",
        "thumbnail": "",
        "blocked": False,
    }


def _contact_push(conv: _Conversation) -> dict[str, Any]:
    data = _contact_webhook(conv)
    del data["account"], data["avatar"]
    return {**data, "type": "contact"}


def _sender_webhook(author: _Author, conv: _Conversation) -> dict[str, Any] | None:
    if author.kind == "contact":
        return _contact_webhook(conv)
    if author.kind == "user":
        return {"id": author.id, "name": author.name, "email": author.email, "type": "user"}
    if author.kind == "agent_bot":
        return {"id": author.id, "name": author.name, "type": "agent_bot"}
    return None


def _sender_push(author: _Author, conv: _Conversation) -> dict[str, Any] | None:
    if author.kind == "contact":
        return _contact_push(conv)
    if author.kind == "user":
        return {
            "id": author.id,
            "name": author.name,
            "available_name": author.name,
            "avatar_url": "",
            "type": "user",
            "availability_status": "online",
            "thumbnail": "",
        }
    if author.kind == "agent_bot":
        return {"id": author.id, "name": author.name, "avatar_url": "", "type": "agent_bot"}
    return None


_SENDER_TYPE = {"contact": "Contact", "user": "User", "agent_bot": "AgentBot"}


def _conversation_object(
    conv: _Conversation, *, at: datetime, last_message: dict[str, Any] | None, waiting: bool
) -> dict[str, Any]:
    unix = _unix(at)
    return {
        "id": conv.conversation_id,
        "inbox_id": conv.inbox_id,
        "channel": conv.channel,
        "status": conv.status,
        "can_reply": True,
        "contact_inbox": {
            "id": conv.contact_id + 1000,
            "contact_id": conv.contact_id,
            "inbox_id": conv.inbox_id,
            "source_id": conv.wa_id,
            "created_at": _iso(at),
            "updated_at": _iso(at),
            "hmac_verified": False,
            "pubsub_token": f"pubsub-{conv.contact_id}",
        },
        "messages": [] if last_message is None else [last_message],
        "labels": list(conv.labels),
        "meta": {
            "sender": _contact_push(conv),
            "assignee": None,
            "assignee_type": None,
            "team": None,
            "hmac_verified": False,
        },
        "additional_attributes": {},
        "custom_attributes": dict(conv.conversation_attributes),
        "snoozed_until": None,
        "unread_count": 1 if waiting else 0,
        "first_reply_created_at": None,
        "priority": None,
        "waiting_since": unix if waiting else 0,
        "agent_last_seen_at": 0,
        "contact_last_seen_at": 0,
        "last_activity_at": unix,
        "timestamp": unix,
        "created_at": unix,
        "updated_at": float(unix),
        "account": conv.account,
    }


def _attachment(
    *,
    message_id: int,
    account_id: int,
    file_type: FileType,
    data_url: str,
    transcribed_text: str,
    content_type: str | None = None,
    extension: str | None = None,
) -> dict[str, Any]:
    default_extension, default_type, width, height = _FILE_DETAILS[file_type]
    extension = extension or default_extension
    content_type = content_type or default_type
    attachment: dict[str, Any] = {
        "id": message_id + 500_000,
        "message_id": message_id,
        "file_type": file_type,
        "account_id": account_id,
        "extension": extension,
        "content_type": content_type,
        "data_url": data_url,
        "thumb_url": f"{data_url}?thumb=250" if file_type == "image" else "",
        "file_size": 48_213,
        "width": width,
        "height": height,
    }
    if file_type == "audio":
        attachment["transcribed_text"] = transcribed_text
    return attachment


def _message_event(
    conv: _Conversation,
    *,
    event: MessageEvent,
    message_id: int,
    content: str | None,
    created_at: datetime,
    message_type: Literal["incoming", "outgoing"],
    author: _Author,
    private: bool = False,
    content_attributes: dict[str, Any] | None = None,
    attachments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    attributes = dict(content_attributes or {})
    incoming = message_type == "incoming"
    source_id = f"wamid.HBgM{message_id:010d}" if incoming else None
    push: dict[str, Any] = {
        "id": message_id,
        "content": content,
        "account_id": conv.account_id,
        "inbox_id": conv.inbox_id,
        "conversation_id": conv.conversation_id,
        "message_type": _PUSH_MESSAGE_TYPE[message_type],
        "created_at": _unix(created_at),
        "updated_at": _iso(created_at),
        "private": private,
        "status": "delivered" if attributes.get("external_echo") else "sent",
        "source_id": source_id,
        "content_type": "text",
        "content_attributes": attributes,
        "sender_type": _SENDER_TYPE.get(author.kind or ""),
        "sender_id": conv.contact_id if author.kind == "contact" else author.id,
        "external_source_ids": {},
        "additional_attributes": {},
        "processed_message_content": content,
        "sentiment": {},
        "conversation": {
            "assignee_id": None,
            "unread_count": 1 if incoming else 0,
            "last_activity_at": _unix(created_at),
            "contact_inbox": {"source_id": conv.wa_id},
        },
    }
    push_sender = _sender_push(author, conv)
    if push_sender is not None:
        push["sender"] = push_sender
    if attachments:
        push["attachments"] = attachments

    body: dict[str, Any] = {
        "event": event,
        "id": message_id,
        "content": content,
        "content_type": "text",
        "content_attributes": attributes,
        "message_type": message_type,
        "private": private,
        "source_id": source_id,
        "created_at": _iso(created_at),
        "additional_attributes": {},
        "sender": _sender_webhook(author, conv),
        "account": conv.account,
        "inbox": {"id": conv.inbox_id, "name": INBOX_NAME},
        "conversation": _conversation_object(
            conv,
            at=created_at,
            # Chatwoot only lists the last non-private message here.
            last_message=None if private else push,
            waiting=incoming,
        ),
    }
    if attachments:
        body["attachments"] = attachments
    return body


def incoming_text(
    *, message_id: int, content: str, created_at: datetime, **where: Unpack[MessageArgs]
) -> dict[str, Any]:
    """A customer's WhatsApp text message."""
    return _message_event(
        _message_conversation(where),
        event="message_created",
        message_id=message_id,
        content=content,
        created_at=created_at,
        message_type="incoming",
        author=_Author(kind="contact"),
    )


def incoming_attachment(
    *,
    message_id: int,
    created_at: datetime,
    file_type: FileType,
    data_url: str,
    transcribed_text: str = "",
    content: str | None = None,
    event: MessageEvent = "message_created",
    content_type: str | None = None,
    extension: str | None = None,
    **where: Unpack[MessageArgs],
) -> dict[str, Any]:
    """A customer's media message; ``content`` is the caption (null when there is none).

    Voice notes arrive first as ``message_created`` with an empty transcript and later as
    ``message_updated`` carrying ``transcribed_text``. ``content_type`` and ``extension``
    override the file type's usual ones (WhatsApp photos are JPEG, stickers WebP images,
    documents anything).
    """
    conv = _message_conversation(where)
    attachment = _attachment(
        message_id=message_id,
        account_id=conv.account_id,
        file_type=file_type,
        data_url=data_url,
        transcribed_text=transcribed_text,
        content_type=content_type,
        extension=extension,
    )
    return _message_event(
        conv,
        event=event,
        message_id=message_id,
        content=content,
        created_at=created_at,
        message_type="incoming",
        author=_Author(kind="contact"),
        attachments=[attachment],
    )


def incoming_location(
    *,
    message_id: int,
    created_at: datetime,
    latitude: float,
    longitude: float,
    name: str = "",
    address: str = "",
    **where: Unpack[MessageArgs],
) -> dict[str, Any]:
    """A shared WhatsApp location: Chatwoot keeps "name, address" as ``fallback_title``
    (empty when the pin has no name) and the coordinates; the message has no content."""
    conv = _message_conversation(where)
    attachment = {
        "id": message_id + 500_000,
        "message_id": message_id,
        "file_type": "location",
        "account_id": conv.account_id,
        "coordinates_lat": latitude,
        "coordinates_long": longitude,
        "fallback_title": f"{name}, {address}" if name else "",
        "data_url": None,
    }
    return _message_event(
        conv,
        event="message_created",
        message_id=message_id,
        content=None,
        created_at=created_at,
        message_type="incoming",
        author=_Author(kind="contact"),
        attachments=[attachment],
    )


def incoming_contact(
    *,
    message_id: int,
    created_at: datetime,
    phone: str,
    first_name: str = "",
    last_name: str = "",
    **where: Unpack[MessageArgs],
) -> dict[str, Any]:
    """A shared WhatsApp contact card: one attachment per phone number, the number as
    ``fallback_title`` and the name in ``meta``."""
    conv = _message_conversation(where)
    meta = {k: v for k, v in (("firstName", first_name), ("lastName", last_name)) if v}
    attachment = {
        "id": message_id + 500_000,
        "message_id": message_id,
        "file_type": "contact",
        "account_id": conv.account_id,
        "fallback_title": phone,
        "meta": meta,
    }
    return _message_event(
        conv,
        event="message_created",
        message_id=message_id,
        content=None,
        created_at=created_at,
        message_type="incoming",
        author=_Author(kind="contact"),
        attachments=[attachment],
    )


def agent_reply(
    *,
    message_id: int,
    content: str,
    created_at: datetime,
    agent_id: int = 3,
    agent_name: str = "Bruno",
    agent_email: str = "bruno@acme.test",
    private: bool = False,
    **where: Unpack[MessageArgs],
) -> dict[str, Any]:
    """A human agent answering from the Chatwoot dashboard (``private``: an internal note)."""
    return _message_event(
        _message_conversation(where),
        event="message_created",
        message_id=message_id,
        content=content,
        created_at=created_at,
        message_type="outgoing",
        author=_Author(kind="user", id=agent_id, name=agent_name, email=agent_email),
        private=private,
    )


def phone_echo(
    *, message_id: int, content: str, created_at: datetime, **where: Unpack[MessageArgs]
) -> dict[str, Any]:
    """A reply typed in the WhatsApp Business phone app, echoed into Chatwoot (coexistence)."""
    return _message_event(
        _message_conversation(where),
        event="message_created",
        message_id=message_id,
        content=content,
        created_at=created_at,
        message_type="outgoing",
        author=_NO_AUTHOR,
        content_attributes={"external_echo": True},
    )


def bot_reply(
    *,
    message_id: int,
    content: str,
    created_at: datetime,
    bot_id: int = 1,
    bot_name: str = "Chatbuffer",
    content_attributes: dict[str, Any] | None = None,
    private: bool = False,
    **where: Unpack[MessageArgs],
) -> dict[str, Any]:
    """A message posted with an agent-bot token, as echoed back to the bot's own webhook."""
    return _message_event(
        _message_conversation(where),
        event="message_created",
        message_id=message_id,
        content=content,
        created_at=created_at,
        message_type="outgoing",
        author=_Author(kind="agent_bot", id=bot_id, name=bot_name),
        private=private,
        content_attributes=content_attributes,
    )


def private_note(
    *, message_id: int, content: str, created_at: datetime, **where: Unpack[MessageArgs]
) -> dict[str, Any]:
    """An agent's internal note: delivered to webhooks, never to WhatsApp."""
    return agent_reply(
        message_id=message_id, content=content, created_at=created_at, private=True, **where
    )


def conversation_status_changed(
    *,
    status: str,
    previous_status: str | None = None,
    at: datetime | None = None,
    **where: Unpack[ConversationArgs],
) -> dict[str, Any]:
    """``conversation_status_changed``; ``changed_attributes`` is null unless a previous status is
    given, because Chatwoot reads it after commit and often loses it."""
    conv = _conversation(where, status)
    changed = (
        None
        if previous_status is None
        else [{"status": {"previous_value": previous_status, "current_value": status}}]
    )
    body = _conversation_object(
        conv, at=at or _REFERENCE_TIME, last_message=None, waiting=status == "pending"
    )
    return {**body, "event": "conversation_status_changed", "changed_attributes": changed}


def contact_push(**where: Unpack[ConversationArgs]) -> dict[str, Any]:
    """The contact as in ``conversation.meta.sender`` (it carries ``type: "contact"``)."""
    return _contact_push(_conversation(where))


def sign(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers Chatwoot sends with a signed delivery of ``body`` (docs/chatwoot.md §2.4)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Chatwoot-Delivery": str(uuid.uuid4()),
        "X-Chatwoot-Timestamp": str(timestamp),
        "X-Chatwoot-Signature": f"sha256={digest}",
    }
