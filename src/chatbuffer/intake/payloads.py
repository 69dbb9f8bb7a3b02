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
        return _without_nul(value)


def _without_nul(value: Any) -> Any:
    """``value`` with every NUL in its texts (and in free-form objects' keys and values)
    replaced, so it can be stored as PostgreSQL text or jsonb."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


class Account(_Wire):
    id: int = ChatwootSmallId


class _Facts(_Wire):
    """Facts about the contact that only the prompt reads: a value of an unexpected shape is
    dropped rather than refusing (and losing) the message."""

    @field_validator(
        "custom_attributes", "additional_attributes", mode="before", check_fields=False
    )
    @classmethod
    def _object(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None


class Sender(_Facts):
    """A contact (no ``type``), a human agent (``user``) or a bot (docs/chatwoot.md §1.3)."""

    id: int | None = None
    name: str | None = None
    type: str | None = None
    # A contact's: read for the prompt (domain.contact), only what the operator chose is kept.
    phone_number: str | None = None
    email: str | None = None
    custom_attributes: dict[str, Any] | None = None
    additional_attributes: dict[str, Any] | None = None

    @field_validator("phone_number", "email", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value if isinstance(value, str) else None


class Conversation(_Facts):
    id: int = ChatwootSmallId
    status: str | None = None
    channel: str | None = None
    inbox_id: int | None = None
    labels: list[str] | None = None
    custom_attributes: dict[str, Any] | None = None
    additional_attributes: dict[str, Any] | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return None
        return [v for v in value if isinstance(v, str)]


class Inbox(_Wire):
    id: int | None = None
    name: str | None = None

    # Only its name is read (for the prompt): an odd shape is dropped, not refused.
    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return value if isinstance(value, str) else None


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
    inbox: Inbox | None = None

    @field_validator("inbox", mode="before")
    @classmethod
    def _inbox(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None

    conversation: Conversation
    attachments: list[AttachmentIn] = Field(default_factory=list)


class ConversationEvent(_Wire):
    """``conversation_status_changed``, ``conversation_updated``, ``conversation_resolved``..."""

    event: str
    id: int = ChatwootSmallId
    status: str | None = None
    account: Account | None = None
    #: ``[{"status": {"previous_value": ..., "current_value": ...}}, ...]`` or null.
    changed_attributes: Any = None

    def status_change(self) -> str | None:
        """The status ``changed_attributes`` says the conversation moved to, if it says so."""
        if not isinstance(self.changed_attributes, list):
            return None
        for change in self.changed_attributes:
            status = change.get("status") if isinstance(change, dict) else None
            if (
                isinstance(status, dict)
                and isinstance(status.get("current_value"), str)
                and status.get("previous_value") != status["current_value"]
            ):
                return str(status["current_value"])
        return None
