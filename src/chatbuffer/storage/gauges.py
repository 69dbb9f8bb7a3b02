"""The database's counts behind ``chatbuffer_open_buffers`` and ``chatbuffer_due_buffers``.

Both read a partial index (``uq_message_buffer_one_active``, ``ix_buffer_jobs_due``), so a scrape
costs two index-only counts whatever the tables hold.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.storage.statements import status_is
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.storage.tables import message_buffer as buffers

_OPEN = select(func.count()).select_from(buffers).where(status_is(buffers.c.status, "active"))


async def buffer_counts(engine: AsyncEngine, now: datetime) -> tuple[int, int]:
    """Buffers still collecting messages, and closed ones whose job waits for a worker."""
    async with engine.connect() as conn:
        open_ = await conn.scalar(_OPEN)
        due = await conn.scalar(
            select(func.count())
            .select_from(jobs)
            .where(status_is(jobs.c.status, "scheduled"), jobs.c.scheduled_for <= now)
        )
    return int(open_ or 0), int(due or 0)
