"""Retention: delete finished buffers, with their messages, jobs and replies, once old enough.

Message text, sender data and the bot's replies are personal data; ``DATA_RETENTION_DAYS`` and
``chatbuffer purge`` bound how long they are kept. Only finished buffers (``completed``,
``superseded``, ``cancelled``, ``failed``) whose last change is older than the cutoff go; an
``active``, ``closed`` or ``processing`` buffer is never touched. Conversation rows stay (they
hold ids, the message count that orders buffers, and a human takeover pause; no text).

Each batch is one transaction: pick up to ``batch_size`` old finished buffers (on PostgreSQL
``FOR UPDATE SKIP LOCKED``, so a replay or a second purge is never waited for), delete what they
own by the full conversation key, then the buffers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatbuffer.domain.ports import Clock
from chatbuffer.storage import database
from chatbuffer.storage.statements import same_conversation, status_in
from chatbuffer.storage.tables import (
    FINISHED_BUFFER,
    UTCDateTime,
    bot_replies,
    conversations,
)
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.storage.tables import buffered_messages as messages
from chatbuffer.storage.tables import message_buffer as buffers

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1_000
#: How often a worker purges when ``DATA_RETENTION_DAYS`` is set.
PURGE_INTERVAL = timedelta(hours=1)

_OLD_FINISHED = (
    status_in(buffers.c.status, FINISHED_BUFFER),
    buffers.c.updated_at < bindparam("p_cutoff", type_=UTCDateTime()),
)

#: One batch, oldest first (the partial index ix_message_buffer_finished).
FINISHED_BEFORE = (
    select(buffers.c.account_id, buffers.c.conversation_id, buffers.c.id)
    .where(*_OLD_FINISHED)
    .order_by(buffers.c.updated_at)
    .limit(bindparam("p_limit"))
    .with_for_update(skip_locked=True)
)


def _of_buffers(table: Any, buffer_id: Any) -> Any:
    return tuple_(table.c.account_id, table.c.conversation_id, buffer_id).in_(
        bindparam("p_buffers", expanding=True)
    )


DELETE_MESSAGES = delete(messages).where(_of_buffers(messages, messages.c.buffer_id))
DELETE_JOBS = delete(jobs).where(_of_buffers(jobs, jobs.c.buffer_id))
DELETE_REPLIES = delete(bot_replies).where(_of_buffers(bot_replies, bot_replies.c.buffer_id))
DELETE_BUFFERS = delete(buffers).where(_of_buffers(buffers, buffers.c.id))

#: A conversation may still name its last, long finished buffer as its active one.
FORGET_BUFFERS = (
    update(conversations)
    .where(
        tuple_(
            conversations.c.account_id,
            conversations.c.chatwoot_conversation_id,
            conversations.c.active_buffer_id,
        ).in_(bindparam("p_buffers", expanding=True))
    )
    .values(active_buffer_id=None)
)


def _count_owned(table: Any) -> Any:
    owner = table.join(
        buffers, same_conversation(table, buffers) & (buffers.c.id == table.c.buffer_id)
    )
    return select(func.count()).select_from(owner).where(*_OLD_FINISHED)


COUNT_BUFFERS = select(func.count()).select_from(buffers).where(*_OLD_FINISHED)
COUNT_MESSAGES = _count_owned(messages)
COUNT_JOBS = _count_owned(jobs)
COUNT_REPLIES = _count_owned(bot_replies)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge deleted, or with ``dry_run`` would delete."""

    buffers: int = 0
    messages: int = 0
    jobs: int = 0
    replies: int = 0
    dry_run: bool = False

    def __add__(self, other: PurgeReport) -> PurgeReport:
        return PurgeReport(
            buffers=self.buffers + other.buffers,
            messages=self.messages + other.messages,
            jobs=self.jobs + other.jobs,
            replies=self.replies + other.replies,
            dry_run=self.dry_run,
        )


async def purge(
    engine: AsyncEngine,
    cutoff: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> PurgeReport:
    """Delete finished buffers last changed before ``cutoff``, ``batch_size`` per transaction."""
    if dry_run:
        return await _count(engine, cutoff)
    total = PurgeReport()
    while True:
        async with engine.begin() as conn:
            batch = await _purge_batch(conn, cutoff, batch_size)
        total += batch
        if batch.buffers < batch_size:
            return total


async def _purge_batch(conn: AsyncConnection, cutoff: datetime, batch_size: int) -> PurgeReport:
    picked = (
        await conn.execute(FINISHED_BEFORE, {"p_cutoff": cutoff, "p_limit": batch_size})
    ).all()
    if not picked:
        return PurgeReport()
    keys = {"p_buffers": [tuple(row) for row in picked]}
    messages_deleted = (await conn.execute(DELETE_MESSAGES, keys)).rowcount
    jobs_deleted = (await conn.execute(DELETE_JOBS, keys)).rowcount
    replies_deleted = (await conn.execute(DELETE_REPLIES, keys)).rowcount
    await conn.execute(FORGET_BUFFERS, keys)
    return PurgeReport(
        buffers=(await conn.execute(DELETE_BUFFERS, keys)).rowcount,
        messages=messages_deleted,
        jobs=jobs_deleted,
        replies=replies_deleted,
    )


async def _count(engine: AsyncEngine, cutoff: datetime) -> PurgeReport:
    params = {"p_cutoff": cutoff}
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{database.READ_ONLY: True})
        buffers_, messages_, jobs_, replies_ = [
            int(await conn.scalar(statement, params) or 0)
            for statement in (COUNT_BUFFERS, COUNT_MESSAGES, COUNT_JOBS, COUNT_REPLIES)
        ]
    return PurgeReport(buffers_, messages_, jobs_, replies_, dry_run=True)


async def purge_periodically(
    engine: AsyncEngine, clock: Clock, keep: timedelta, interval: timedelta = PURGE_INTERVAL
) -> None:
    """Purge what is older than ``keep`` now and every ``interval``, until cancelled.

    Every worker replica may run this: batches skip rows another purge holds. A failed round
    (the database is down, say) is logged and tried again at the next interval.
    """
    while True:
        try:
            report = await purge(engine, clock.now() - keep)
        except Exception as exc:
            logger.warning("retention purge failed: %s: %s", type(exc).__name__, exc)
        else:
            if report.buffers:
                logger.info(
                    "retention purge",
                    extra={
                        "buffers": report.buffers,
                        "messages": report.messages,
                        "jobs": report.jobs,
                        "replies": report.replies,
                    },
                )
        await clock.sleep(interval.total_seconds())
