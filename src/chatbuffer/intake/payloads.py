"""The parts of Chatwoot's webhook JSON that chatbuffer reads (wire shape only).

Unknown fields are ignored: Chatwoot adds fields between versions, and we must not reject them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Chatwoot's ids are PostgreSQL integers or bigints; anything outside is not a Chatwoot id, and
# would not fit the columns that store it (account and conversation ids are 32-bit there too).
ChatwootId = Field(ge=1, le=2**63 - 1)
ChatwootSmallId = Field(ge=1, le=2**31 - 1)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL's text and jsonb cannot hold NUL, and it means nothing in a chat message:
        # mark where it was instead of refusing (and losing) the whole message.
        if isinstance(value, str) and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


class Account(_Wire):
    id: int = ChatwootSmallId


class Sender(_Wire):
    id: int | None = None
    name: str | None = None
    type: str | None = None


class Conversation(_Wire):
    id: int = ChatwootSmallId
    status: str | None = None
    channel: str | None = None
    inbox_id: int | None = None


class AttachmentIn(_Wire):
    file_type: str = "file"
    data_url: str | None = None
    transcribed_text: str | None = None
    content_type: str | None = None
    file_size: int | None = None
    extension: str | None = None
    # A location: "name, address" and coordinates; a contact card: the number.
    fallback_title: str | None = None
    coordinates_lat: float | None = None
    coordinates_long: float | None = None
    # A contact card's name: {"firstName": ..., "lastName": ...}.
    meta: dict[str, Any] | None = None

    @property
    def contact_name(self) -> str | None:
        meta = self.meta or {}
        parts = [str(meta[k]).strip() for k in ("firstName", "lastName") if meta.get(k)]
        return " ".join(p for p in parts if p) or None


class MessageEvent(_Wire):
    """``message_created`` / ``message_updated``."""

    event: str
    id: int = ChatwootId
    content: str | None = None
    content_type: str | None = "text"
    content_attributes: dict[str, Any] | None = None
    message_type: str
    private: bool = False
    created_at: str | int | None = None
    sender: Sender | None = None
    account: Account
    conversation: Conversation
    attachments: list[AttachmentIn] = Field(default_factory=list)


class ConversationEvent(_Wire):
    """``conversation_status_changed``, ``conversation_updated``, ``conversation_resolved``..."""

    event: str
    id: int = ChatwootSmallId
    status: str | None = None
    account: Account | None = None
