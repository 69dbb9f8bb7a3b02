"""Value objects the rest of chatbuffer passes around."""

from __future__ import annotations

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
    """A file the contact sent, as Chatwoot describes it."""

    file_type: str
    data_url: str | None = None
    transcript: str | None = None
    content_type: str | None = None
    file_size: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "file_type": self.file_type,
            "data_url": self.data_url,
            "transcript": self.transcript,
            "content_type": self.content_type,
            "file_size": self.file_size,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Attachment:
        return cls(
            file_type=str(raw.get("file_type") or "file"),
            data_url=raw.get("data_url"),
            transcript=raw.get("transcript") or None,
            content_type=raw.get("content_type"),
            file_size=raw.get("file_size"),
        )


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


Speaker = Literal["contact", "assistant"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One earlier turn of the conversation, oldest first when in a list.

    Stored facts, not prompt text: ``domain.aggregation`` decides how a turn reads to the model.
    """

    role: Speaker
    content: str | None
    at: datetime
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelDecision:
    """What the LLM answered, in the plan's JSON shape."""

    should_respond: bool
    content: str
    confidence: float
    intent: str
    actions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SendReply:
    """Post ``content`` as one public reply."""

    content: str


@dataclass(frozen=True, slots=True)
class HandOff:
    """Leave the draft as a private note for a human and open the conversation."""

    draft: str
    reason: str


@dataclass(frozen=True, slots=True)
class StaySilent:
    """Send nothing."""

    reason: str


Outcome = SendReply | HandOff | StaySilent
