"""The answers intake gives besides "stored", shared by the PostgreSQL and SQLite paths."""

from __future__ import annotations

from datetime import datetime

from chatbuffer.domain.ports import IntakeResult

DUPLICATE = IntakeResult(
    stored=False, buffer_id=None, opened_buffer=False, message_count=0, due_at=None, closed=False
)


def human_holds(until: datetime) -> IntakeResult:
    """Not stored: a human agent handles the conversation until ``until``."""
    return IntakeResult(
        stored=False,
        buffer_id=None,
        opened_buffer=False,
        message_count=0,
        due_at=None,
        closed=False,
        human_active_until=until,
    )
