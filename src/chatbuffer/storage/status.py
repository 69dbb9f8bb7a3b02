"""What the queue looks like right now, for ``chatbuffer status`` and ``chatbuffer doctor``.

Read-only, a handful of aggregate queries on the indexes the worker uses. Workers register
nowhere: the only trace a worker leaves in the database is the lease it holds on a buffer it is
answering, so a worker is *seen* while it holds one (``lease_owner`` of a running job whose lease
has not expired). An idle worker, waiting for the next due buffer, is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.model import ConversationKey
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.storage.tables import message_buffer as buffers


@dataclass(frozen=True, slots=True)
class QueueStatus:
    #: Buffers not answered yet and not in a worker's hands: collecting the contact's messages,
    #: or past their quiet period and waiting for a worker (``active``, ``closed``).
    open: int
    #: Buffers whose burst has ended, waiting for their due time or for a worker.
    waiting: int
    #: Of those, the ones whose due time has passed (a worker should be on them).
    due: int
    #: The longest a due buffer has waited past its due time, or None when none is due.
    oldest_due: timedelta | None
    #: Buffers a worker holds under a live lease.
    processing: int
    #: Buffers given up on (``chatbuffer buffers list``, ``replay``).
    failed: int
    #: Workers seen holding a live lease, with how many buffers each holds.
    workers: dict[str, int]
    #: Running jobs whose lease ran out: their worker died or stalls; another will take them.
    expired_leases: int


async def read(engine: AsyncEngine, now: datetime) -> QueueStatus:
    async with engine.connect() as conn:
        counted = await conn.execute(
            select(buffers.c.status, func.count()).group_by(buffers.c.status)
        )
        by_status: dict[str, int] = {str(s): int(n) for s, n in counted.all()}
        scheduled = jobs.c.status == "scheduled"
        waiting, due, oldest = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(jobs.c.scheduled_for <= now),
                    func.min(jobs.c.scheduled_for).filter(jobs.c.scheduled_for <= now),
                ).where(scheduled)
            )
        ).one()
        running = jobs.c.status == "running"
        held = (
            await conn.execute(
                select(jobs.c.lease_owner, func.count())
                .where(and_(running, jobs.c.lease_expires_at > now))
                .group_by(jobs.c.lease_owner)
            )
        ).all()
        workers = {str(owner): int(count) for owner, count in held}
        expired = (
            await conn.execute(
                select(func.count()).where(and_(running, jobs.c.lease_expires_at <= now))
            )
        ).scalar_one()
    oldest_at = _as_utc(oldest, now)
    return QueueStatus(
        open=by_status.get("active", 0) + by_status.get("closed", 0),
        waiting=int(waiting),
        due=int(due),
        oldest_due=None if oldest_at is None else max(now - oldest_at, timedelta(0)),
        processing=sum(workers.values()),
        failed=int(by_status.get("failed", 0)),
        workers=workers,
        expired_leases=int(expired),
    )


def _as_utc(value: object, now: datetime) -> datetime | None:
    # An aggregate loses the column's type on SQLite, which then returns its stored text.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=now.tzinfo)


async def latest_conversation(
    engine: AsyncEngine, account_id: int | None
) -> ConversationKey | None:
    """The conversation that most recently had a buffer (of ``account_id``, if given)."""
    query = select(buffers.c.account_id, buffers.c.conversation_id)
    if account_id is not None:
        query = query.where(buffers.c.account_id == account_id)
    async with engine.connect() as conn:
        row = (await conn.execute(query.order_by(buffers.c.created_at.desc()).limit(1))).first()
    return None if row is None else ConversationKey(int(row[0]), int(row[1]))
