"""Stored rows into what the pipeline reads: a buffer's messages and the conversation's turns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chatbuffer.domain.model import (
    Assessment,
    Attachment,
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
    Speaker,
)


def inbound(
    key: ConversationKey,
    chatwoot_message_id: int,
    content: str | None,
    kind: Any,
    content_type: str | None,
    received_at: datetime,
    attachments: Any,
    sender: Any,
    conversation: Any,
) -> InboundMessage:
    """A stored message (attachments, sender and conversation as their stored JSON)."""
    return InboundMessage(
        key=key,
        chatwoot_message_id=chatwoot_message_id,
        content=content,
        kind=kind,
        content_type=content_type or "text",
        received_at=received_at,
        attachments=tuple(Attachment.from_json(a) for a in attachments or []),
        sender=sender or {},
        conversation=conversation or {},
    )


#: The far past: the lower bound of history when the conversation has no summary yet.
NO_SUMMARY = datetime.min.replace(tzinfo=UTC)

HistoryRow = tuple[int, str, str | None, str | None, Any, datetime]
"""A ``history_messages`` row: Chatwoot id, role, author, content, attachments, time."""


def turns(
    earlier: Sequence[tuple[str | None, Any, datetime]],
    replies: Sequence[tuple[str, datetime]],
    limit: int,
    history: Sequence[HistoryRow] = (),
) -> list[HistoryEntry]:
    """The contact's earlier messages (text, stored attachments, time), the bot's confirmed
    replies (text, time) and the ``history_messages`` rows (agents' messages, history fetched
    from Chatwoot), interleaved by time: the last ``limit`` of them."""
    if limit <= 0:
        return []
    entries = (
        [
            HistoryEntry(role="contact", content=content, at=at, attachments=_attachments(stored))
            for content, stored, at in earlier
        ]
        + [HistoryEntry(role="assistant", content=content, at=at) for content, at in replies]
        + [
            HistoryEntry(
                role=_role(role),
                content=content,
                at=at,
                attachments=_attachments(stored),
                author=author,
                chatwoot_message_id=message_id,
            )
            for message_id, role, author, content, stored, at in history
        ]
    )
    entries.sort(key=lambda e: e.at)
    return entries[-limit:]


def summary(
    text: str | None, through: datetime | None, count: int | None
) -> ConversationSummary | None:
    """The stored summary, when there is one."""
    if text is None or through is None:
        return None
    return ConversationSummary(text=text, through=through, turns=count or 0)


def history_row(
    key: ConversationKey, entry: HistoryEntry, source: str, now: datetime
) -> dict[str, Any]:
    """A turn as a ``history_messages`` row (it must carry its Chatwoot id)."""
    if entry.chatwoot_message_id is None:
        raise ValueError("a history row needs the Chatwoot message id")
    return {
        "account_id": key.account_id,
        "conversation_id": key.conversation_id,
        "chatwoot_message_id": entry.chatwoot_message_id,
        "role": entry.role,
        "author": entry.author,
        "content": entry.content,
        "attachments": [a.as_json() for a in entry.attachments],
        "happened_at": entry.at,
        "source": source,
        "created_at": now,
    }


def _attachments(stored: Any) -> tuple[Attachment, ...]:
    return tuple(Attachment.from_json(a) for a in stored or [])


_ROLES: dict[str, Speaker] = {"contact": "contact", "assistant": "assistant", "agent": "agent"}


def _role(stored: str) -> Speaker:
    return _ROLES.get(stored, "agent")


def assessment(row: Any) -> Assessment | None:
    """A ``message_buffer`` row's assessment columns, or None before the model answered."""
    if row.urgency is None or row.model_intent is None:
        return None
    actions = row.model_actions if isinstance(row.model_actions, list) else []
    return Assessment(
        urgency=row.urgency,
        intent=row.model_intent,
        actions=tuple(str(a) for a in actions),
        confidence=float(row.model_confidence or 0.0),
        should_respond=bool(row.model_should_respond),
    )
