"""Value objects the rest of chatbuffer passes around."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

MessageKind = Literal["text", "audio", "image", "file"]


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One Chatwoot conversation: the account id and the conversation's display id.

    Every hot-path row and statement is keyed by this pair, so the tables can be distributed by it.
    """

    account_id: int
    conversation_id: int

    def __str__(self) -> str:
        return f"{self.account_id}/{self.conversation_id}"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the contact sent, as Chatwoot describes it.

    Images, voice notes and files have a ``data_url`` on Chatwoot; a location has coordinates and
    a ``fallback_title`` ("name, address"); a contact card has the number as ``fallback_title``
    and the name as ``contact_name`` (Chatwoot's ``meta.firstName`` and ``lastName``).
    """

    file_type: str
    data_url: str | None = None
    transcript: str | None = None
    content_type: str | None = None
    file_size: int | None = None
    extension: str | None = None
    fallback_title: str | None = None
    coordinates_lat: float | None = None
    coordinates_long: float | None = None
    contact_name: str | None = None

    def as_json(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "file_type": self.file_type,
            "data_url": self.data_url,
            "transcript": self.transcript,
            "content_type": self.content_type,
            "file_size": self.file_size,
        }
        # Only the fields a kind has, so a stored text or voice note looks as it always did.
        extra = {
            "extension": self.extension,
            "fallback_title": self.fallback_title,
            "coordinates_lat": self.coordinates_lat,
            "coordinates_long": self.coordinates_long,
            "contact_name": self.contact_name,
        }
        stored.update({k: v for k, v in extra.items() if v is not None})
        return stored

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Attachment:
        return cls(
            file_type=str(raw.get("file_type") or "file"),
            data_url=raw.get("data_url"),
            transcript=raw.get("transcript") or None,
            content_type=raw.get("content_type"),
            file_size=raw.get("file_size"),
            extension=raw.get("extension") or None,
            fallback_title=raw.get("fallback_title") or None,
            coordinates_lat=_number(raw.get("coordinates_lat")),
            coordinates_long=_number(raw.get("coordinates_long")),
            contact_name=raw.get("contact_name") or None,
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class InlineImage:
    """An image's bytes, to travel inside the model request (never as a link)."""

    media_type: str
    data: bytes

    @property
    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class AttachmentContent:
    """What was read from one attachment for the model: an image to show, or a file's text.

    ``problem`` says why neither could be had (too large, not on the Chatwoot host, a format the
    model cannot take); the prompt then says so in the attachment's place.
    """

    image: InlineImage | None = None
    text: str | None = None
    #: The text was cut at the configured length.
    truncated: bool = False
    pages: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A contact's message, accepted for buffering."""

    key: ConversationKey
    chatwoot_message_id: int
    content: str | None
    kind: MessageKind
    content_type: str
    received_at: datetime
    sent_at: datetime | None = None
    attachments: tuple[Attachment, ...] = ()
    sender: dict[str, Any] = field(default_factory=dict)
    conversation: dict[str, Any] = field(default_factory=dict)


#: Who said a turn: the contact, the bot (``assistant``) or a human agent of the business.
Speaker = Literal["contact", "assistant", "agent"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One earlier turn of the conversation, oldest first when in a list.

    Stored facts, not prompt text: ``domain.aggregation`` decides how a turn reads to the model.
    """

    role: Speaker
    content: str | None
    at: datetime
    attachments: tuple[Attachment, ...] = ()
    #: A human agent's name as Chatwoot shows it (None for the contact, the bot, or a reply
    #: typed in the business's WhatsApp phone app, which Chatwoot knows no author of).
    author: str | None = None
    #: Chatwoot's id of the message, where chatbuffer stored it by id (agents' messages and
    #: history fetched from Chatwoot).
    chatwoot_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """The model's rolling summary of a conversation's turns older than the history shown.

    It covers every stored turn up to ``through`` (the time of the newest turn folded in);
    ``turns`` counts the turns folded in over all its refreshes.
    """

    text: str
    through: datetime
    turns: int


@dataclass(frozen=True, slots=True)
class ModelDecision:
    """What the LLM answered, in the plan's JSON shape."""

    should_respond: bool
    content: str
    confidence: float
    intent: str
    actions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Assessment:
    """What is kept with a buffer about its burst: its urgency (``domain.urgency``) and what the
    model said of it besides the reply."""

    urgency: int
    intent: str
    actions: tuple[str, ...]
    confidence: float
    should_respond: bool

    @classmethod
    def of(cls, answer: ModelDecision, urgency: int) -> Assessment:
        return cls(
            urgency=urgency,
            intent=answer.intent,
            actions=tuple(answer.actions),
            confidence=answer.confidence,
            should_respond=answer.should_respond,
        )


@dataclass(frozen=True, slots=True)
class SendReply:
    """Post ``content`` as one public reply."""

    content: str


@dataclass(frozen=True, slots=True)
class HandOff:
    """Leave the draft as a private note for a human and open the conversation; with ``reply``,
    post it to the contact first (the model answered and asked for a person too)."""

    draft: str
    reason: str
    reply: str | None = None


@dataclass(frozen=True, slots=True)
class StaySilent:
    """Send nothing."""

    reason: str


Outcome = SendReply | HandOff | StaySilent
