"""The burst as one JSON event, for a consumer of the operator's own (``BURST_WEBHOOK_URL``).

Everything the model would have been told, as data instead of prose: every message of the burst
in order with its attachments (a voice note's transcript, a file's text, an image's bytes as a
``data:`` URL), the conversation and the contact as Chatwoot sent them, the history and the
business's instructions. The shape is versioned and described by
``docs/schemas/burst-event.schema.json``; the answer has the model's fields
(``docs/schemas/burst-answer.schema.json``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from chatbuffer.domain.aggregation import PromptInputs
from chatbuffer.domain.model import AttachmentContent, ConversationKey

EVENT_TYPE = "burst.closed"
VERSION = 1


def burst_event(key: ConversationKey, buffer_id: uuid.UUID, inputs: PromptInputs) -> dict[str, Any]:
    last = inputs.messages[-1]
    return {
        "type": EVENT_TYPE,
        "version": VERSION,
        "buffer_id": str(buffer_id),
        "account_id": key.account_id,
        "conversation_id": key.conversation_id,
        "inbox_id": _number(last.conversation.get("inbox_id")),
        "contact": dict(last.sender),
        "conversation": dict(last.conversation),
        "instructions": inputs.instructions,
        "messages": [
            {
                "chatwoot_message_id": m.chatwoot_message_id,
                "content": m.content,
                "kind": m.kind,
                "content_type": m.content_type,
                "sent_at": _time(m.sent_at),
                "received_at": _time(m.received_at),
                "attachments": [
                    _attachment(a.as_json(), inputs.contents.get((m.chatwoot_message_id, i)))
                    for i, a in enumerate(m.attachments)
                ],
            }
            for m in inputs.messages
        ],
        "history": [
            {"role": h.role, "content": h.content, "at": _time(h.at)}
            for h in (inputs.history if inputs.include_history else ())
        ],
    }


def _attachment(stored: dict[str, Any], read: AttachmentContent | None) -> dict[str, Any]:
    described = {k: v for k, v in stored.items() if v is not None}
    if read is not None:
        if read.image is not None:
            described["image"] = read.image.data_url
        if read.text is not None:
            described["text"] = read.text
            described["truncated"] = read.truncated
        if read.problem is not None:
            described["problem"] = read.problem
    return described


def _time(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
