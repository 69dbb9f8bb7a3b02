"""One ``buffer_processed`` line per answered buffer, with the seed's ``BufferLog`` fields.

The worker answers each buffer in a task of its own, and every event about it, and every model
request for it, happens inside that task: the buffer being answered is kept in a context
variable from its ``buffer_closed`` event to its outcome, so nothing is shared between buffers
and nothing outlives the task.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chatbuffer.domain.model import ConversationKey, ModelDecision
from chatbuffer.domain.ports import Clock, EventName
from chatbuffer.observability.metrics import Metrics, seconds_between

logger = logging.getLogger("chatbuffer.buffers")


@dataclass(slots=True)
class Turn:
    """What is known of the buffer the current task answers."""

    buffer_id: str
    key: ConversationKey
    user_id: str | None
    messages: int
    attempt: int
    claimed_at: datetime
    first_message_at: datetime | None
    due_at: datetime | None
    confidence: float | None = None
    model_requests: int = 0
    #: The model's text for the request in flight (``note_raw_answer``).
    raw_answer: str | None = None


_current: ContextVar[Turn | None] = ContextVar("chatbuffer_turn", default=None)


def current() -> Turn | None:
    return _current.get()


def note_model_request() -> None:
    turn = _current.get()
    if turn is not None:
        turn.model_requests += 1


def note_raw_answer(text: str) -> None:
    turn = _current.get()
    if turn is not None:
        turn.raw_answer = text


def note_decision(answer: ModelDecision) -> None:
    turn = _current.get()
    if turn is not None:
        turn.confidence = answer.confidence


def _outcome(name: EventName, fields: dict[str, Any]) -> str | None:
    if name == "reply_sent":
        return "replied"
    if name == "handoff":
        return "handed_off"
    if name == "no_reply":
        return "cancelled" if fields.get("reason") == "cancelled" else "silent"
    if name == "buffer_failed":
        return "failed"
    if name == "buffer_superseded":
        return "superseded"
    return None


class BufferLogObserver:
    """Writes ``buffer_processed`` at INFO when a buffer reaches its outcome (never any text)
    and observes ``chatbuffer_buffer_processing_seconds``."""

    def __init__(self, clock: Clock, metrics: Metrics | None = None) -> None:
        self._clock = clock
        self._metrics = metrics

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None:
        if name == "buffer_closed":
            due = fields.get("scheduled_for")
            lateness_ms = float(fields.get("lateness_ms", 0.0))
            now = self._clock.now()
            claimed = now
            if isinstance(due, datetime):
                claimed = due + timedelta(milliseconds=lateness_ms)
            user = fields.get("contact_id")
            _current.set(
                Turn(
                    buffer_id=str(fields.get("buffer_id")),
                    key=key,
                    user_id=None if user is None else str(user),
                    messages=int(fields.get("messages", 0)),
                    attempt=int(fields.get("attempt", 1)),
                    claimed_at=claimed,
                    first_message_at=fields.get("first_message_at"),
                    due_at=due if isinstance(due, datetime) else None,
                )
            )
            return
        outcome = _outcome(name, fields)
        turn = _current.get()
        if outcome is None or turn is None or turn.buffer_id != fields.get("buffer_id"):
            return
        _current.set(None)
        now = self._clock.now()
        processing = seconds_between(turn.claimed_at, now)
        if self._metrics is not None:
            self._metrics.processing.observe(processing)
            # A retry's due time is its retry time, not the buffer's closing.
            if turn.attempt == 1 and turn.due_at is not None:
                self._metrics.answer_delay.observe(seconds_between(turn.due_at, now))
        duration = (
            seconds_between(turn.first_message_at, turn.due_at)
            if turn.first_message_at is not None and turn.due_at is not None
            else None
        )
        logger.info(
            "buffer_processed",
            extra={
                "bufferId": turn.buffer_id,
                "accountId": key.account_id,
                "conversationId": key.conversation_id,
                "userId": turn.user_id,
                "messageCount": turn.messages,
                "bufferDuration": None if duration is None else round(duration * 1000),
                "processingTime": round(processing * 1000),
                "aiConfidence": turn.confidence,
                "responseGenerated": outcome == "replied",
                "timestamp": now.isoformat(),
                "outcome": outcome,
                "attempt": turn.attempt,
                "modelRequests": turn.model_requests,
            },
        )
