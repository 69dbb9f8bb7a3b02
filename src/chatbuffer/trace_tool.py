"""``chatbuffer buffers trace ID``: one buffer's turn as stored, as JSON.

Its messages (ids and times, not their text), how each moved the buffer's closing time, why it
closed, each model request exactly as sent with the model's raw answer and the decision, and what
was posted. Reads ``DATABASE_URL`` directly, as ``prompt show`` does; changes nothing.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from chatbuffer.domain.buffer import BufferPolicy, BufferWindow, close_reason, due_at
from chatbuffer.errors import ChatbufferError
from chatbuffer.settings import Settings
from chatbuffer.storage import database
from chatbuffer.storage.traces import StoredTrace, stored_trace


class UnknownBuffer(ChatbufferError):
    """No buffer has the id asked for."""


async def show(settings: Settings, buffer_id: uuid.UUID) -> str:
    engine = database.create_engine(settings.database_url, pool_size=1)
    try:
        trace = await stored_trace(engine, buffer_id)
    finally:
        await engine.dispose()
    if trace is None:
        raise UnknownBuffer(f"no buffer {buffer_id} (it may have been purged)")
    return json.dumps(document(buffer_id, trace, settings.buffer_policy), indent=2, default=_plain)


def document(buffer_id: uuid.UUID, trace: StoredTrace, policy: BufferPolicy) -> dict[str, Any]:
    window: list[dict[str, Any]] = []
    current: BufferWindow | None = None
    due: datetime | None = None
    for message in trace.messages:
        at = message["received_at"]
        current = BufferWindow(
            started_at=current.started_at if current else at,
            last_message_at=at,
            message_count=(current.message_count if current else 0) + 1,
        )
        due = due_at(current, policy)
        window.append(
            {"message": message["chatwoot_message_id"], "received_at": at, "closes_at": due}
        )
    if trace.status == "cancelled":
        reason: str | None = "cancelled"
    elif current is not None and due is not None and trace.status != "active":
        reason = close_reason(current, due, policy)
    else:
        reason = None
    return {
        "buffer_id": str(buffer_id),
        "account_id": trace.key.account_id,
        "conversation_id": trace.key.conversation_id,
        "status": trace.status,
        "outcome": trace.outcome,
        "close_reason": reason,
        "job": trace.job,
        "messages": trace.messages,
        "window": window,
        "model_requests": trace.exchanges,
        "sent": trace.sent,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)
