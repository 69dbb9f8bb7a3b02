"""Stored rows into what the pipeline reads: a buffer's messages and the conversation's turns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chatbuffer.domain.model import Attachment, ConversationKey, HistoryEntry, InboundMessage


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


def turns(
    earlier: Sequence[tuple[str | None, Any, datetime]],
    replies: Sequence[tuple[str, datetime]],
    limit: int,
) -> list[HistoryEntry]:
    """The contact's earlier messages (text, stored attachments, time) and the bot's confirmed
    replies (text, time), interleaved by time: the last ``limit`` of them."""
    if limit <= 0:
        return []
    entries = [
        HistoryEntry(
            role="contact",
            content=content,
            at=at,
            attachments=tuple(Attachment.from_json(a) for a in attachments or []),
        )
        for content, attachments, at in earlier
    ] + [HistoryEntry(role="assistant", content=content, at=at) for content, at in replies]
    entries.sort(key=lambda e: e.at)
    return entries[-limit:]
