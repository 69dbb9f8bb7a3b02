"""``ChatwootHistory``: a conversation's messages from before chatbuffer, read from Chatwoot.

Only a *user* token may list a conversation's messages (an agent bot's is refused, see
``docs/chatwoot.md`` §3), hence ``CHATWOOT_USER_TOKEN``, used for this and nothing else.
``GET …/messages?before=<id>`` answers the (at most) 20 messages before ``id``, oldest first, in
the REST encoding: ``message_type`` 0 incoming, 1 outgoing, 2 activity, 3 template, and
``created_at`` in unix seconds. Private notes and activity messages are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2

from chatbuffer.chatwoot.client import call, conversation_path, http_client
from chatbuffer.domain.model import Attachment, ConversationKey, HistoryEntry, Speaker

#: Chatwoot's page size for ``before``; a shorter page is the conversation's beginning.
PAGE = 20
_INCOMING, _OUTGOING, _ACTIVITY, _TEMPLATE = 0, 1, 2, 3
#: Senders whose outgoing messages are the business's automation, not a person.
_BOTS = frozenset({"AgentBot", "Captain::Assistant"})


class ChatwootHistory:
    """Implements :class:`chatbuffer.domain.ports.HistorySource`."""

    def __init__(
        self,
        *,
        base_url: str,
        user_token: str,
        timeout_s: float = 10.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = http_client(base_url, user_token, timeout_s, transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def earlier(
        self, key: ConversationKey, before_message_id: int, limit: int
    ) -> Sequence[HistoryEntry]:
        found: list[HistoryEntry] = []
        before = before_message_id
        # A page of nothing but notes and activity moves on; enough pages for the limit and
        # a few such, never the whole of a long conversation.
        for _ in range(limit // PAGE + 3):
            if len(found) >= limit:
                break
            answer = await call(
                self._client,
                "GET",
                conversation_path(key, "/messages"),
                params={"before": before},
            )
            page = answer.get("payload") if isinstance(answer, dict) else None
            listed: list[tuple[int, Mapping[str, Any]]] = []
            for message in _list(page):
                message_id = _id(message)
                if message_id is not None and message_id < before:
                    listed.append((message_id, message))
            if not listed:
                break
            found = [e for e in (entry(m) for _, m in listed) if e is not None] + found
            before = min(message_id for message_id, _ in listed)
            if len(listed) < PAGE:
                break
        return found[-limit:] if limit > 0 else []


def _id(message: Mapping[str, Any]) -> int | None:
    value = message.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def entry(message: Mapping[str, Any]) -> HistoryEntry | None:
    """A REST message as a turn, or None for a note, an activity or a message of no time."""
    kind = message.get("message_type")
    at = _time(message.get("created_at"))
    message_id = _id(message)
    if message.get("private") or kind not in (_INCOMING, _OUTGOING, _TEMPLATE):
        return None
    if at is None or message_id is None:
        return None
    sender = message.get("sender")
    sender = sender if isinstance(sender, dict) else {}
    sender_type = message.get("sender_type")
    role: Speaker
    author: str | None = None
    if kind == _INCOMING:
        role = "contact"
    elif sender_type in _BOTS or kind == _TEMPLATE:
        role = "assistant"
    else:
        role = "agent"
        if sender_type == "User":
            name = sender.get("available_name") or sender.get("name")
            author = name if isinstance(name, str) and name.strip() else None
    content = message.get("content")
    return HistoryEntry(
        role=role,
        content=content if isinstance(content, str) else None,
        at=at,
        attachments=tuple(_attachment(a) for a in _list(message.get("attachments"))),
        author=author,
        chatwoot_message_id=message_id,
    )


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _attachment(raw: Mapping[str, Any]) -> Attachment:
    return Attachment.from_json(
        {
            "file_type": raw.get("file_type"),
            "data_url": raw.get("data_url"),
            "transcript": raw.get("transcribed_text"),
            "content_type": raw.get("content_type"),
            "file_size": raw.get("file_size"),
            "extension": raw.get("extension"),
            "fallback_title": raw.get("fallback_title"),
            "coordinates_lat": raw.get("coordinates_lat"),
            "coordinates_long": raw.get("coordinates_long"),
        }
    )


def _time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
