"""``SqlBufferStore``: the durable buffers, their jobs and the claim, on SQLite or PostgreSQL.

Concurrency, in short:

* Intake locks the conversation row first, so two deliveries for one conversation queue up while
  different conversations proceed in parallel. Every statement it runs is keyed by
  (account_id, conversation_id).
* The claim is the one cross-conversation statement. On PostgreSQL it locks job and buffer rows
  with ``FOR UPDATE ... SKIP LOCKED`` and never waits, so it cannot deadlock with intake; a buffer
  that intake is extending right now is simply skipped and picked up on the next wake-up. On
  SQLite every write transaction is ``BEGIN IMMEDIATE``, so writers are serialised.
* Extending a buffer is conditional on it still being ``active``: if a worker claimed it a moment
  earlier, the message opens a new buffer instead of joining one whose reply is being written.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatbuffer.domain import buffer
from chatbuffer.domain.aggregation import describe
from chatbuffer.domain.model import (
    Attachment,
    ConversationKey,
    HistoryEntry,
    InboundMessage,
)
from chatbuffer.domain.ports import (
    BufferContents,
    ClaimedJob,
    IntakeResult,
    PostedMessage,
)
from chatbuffer.storage.tables import (
    bot_replies,
    conversations,
    feature_flags,
)
from chatbuffer.storage.tables import (
    buffer_processing_jobs as jobs,
)
from chatbuffer.storage.tables import (
    buffered_messages as messages,
)
from chatbuffer.storage.tables import (
    message_buffer as buffers,
)

WAKE_CHANNEL = "chatbuffer_wake"

# Buffers a worker may take: still collecting but due, closed and waiting, or held by a worker
# whose lease ran out.
CLAIMABLE_BUFFER = ("active", "closed", "processing")


@dataclass(frozen=True, slots=True)
class _OpenBuffer:
    id: uuid.UUID
    window: buffer.BufferWindow


def _in_conversation(table: Any, key: ConversationKey) -> Any:
    return and_(
        table.c.account_id == key.account_id, table.c.conversation_id == key.conversation_id
    )


class SqlBufferStore:
    """Implements :class:`chatbuffer.domain.ports.BufferStore` over SQLAlchemy Core."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # -- intake ---------------------------------------------------------------------------

    async def record_incoming(
        self, message: InboundMessage, policy: buffer.BufferPolicy, now: datetime
    ) -> IntakeResult:
        key = message.key
        async with self._engine.begin() as conn:
            await self._lock_conversation(conn, key, now)
            duplicate = await conn.scalar(
                select(messages.c.id).where(
                    _in_conversation(messages, key),
                    messages.c.chatwoot_message_id == message.chatwoot_message_id,
                )
            )
            if duplicate is not None:
                return IntakeResult(
                    stored=False,
                    buffer_id=None,
                    opened_buffer=False,
                    message_count=0,
                    due_at=None,
                    closed=False,
                )
            current = await self._open_buffer(conn, key)
            placement = buffer.place(current.window if current else None, policy, now)
            buffer_id: uuid.UUID | None = None
            if current is not None and not placement.opens_new:
                extended = await self._extend(conn, key, current.id, placement, now)
                buffer_id = current.id if extended else None
            if buffer_id is None:
                if current is not None:
                    await self._close(conn, key, current.id, now)
                placement = buffer.place(None, policy, now)
                buffer_id = await self._open(conn, key, placement, now)
            await conn.execute(
                insert(messages).values(
                    id=uuid.uuid4(),
                    buffer_id=buffer_id,
                    account_id=key.account_id,
                    conversation_id=key.conversation_id,
                    chatwoot_message_id=message.chatwoot_message_id,
                    content=message.content,
                    message_type=message.kind,
                    content_type=message.content_type,
                    attachments=[a.as_json() for a in message.attachments],
                    sender_info=message.sender,
                    conversation_info=message.conversation,
                    received_at=now,
                )
            )
            await conn.execute(
                update(conversations)
                .where(
                    conversations.c.account_id == key.account_id,
                    conversations.c.chatwoot_conversation_id == key.conversation_id,
                )
                .values(
                    active_buffer_id=None if placement.closes_now else buffer_id,
                    last_message_at=now,
                    message_count=conversations.c.message_count + 1,
                    conversation_state="idle" if placement.closes_now else "buffering",
                    updated_at=now,
                )
            )
            if self._postgres:
                # Delivered only if this transaction commits, so a worker never wakes for
                # a buffer it cannot see yet.
                await conn.execute(select(func.pg_notify(WAKE_CHANNEL, placement.due.isoformat())))
            return IntakeResult(
                stored=True,
                buffer_id=buffer_id,
                opened_buffer=placement.opens_new,
                message_count=placement.window.message_count,
                due_at=placement.due,
                closed=placement.closes_now,
            )

    async def _lock_conversation(
        self, conn: AsyncConnection, key: ConversationKey, now: datetime
    ) -> None:
        where = and_(
            conversations.c.account_id == key.account_id,
            conversations.c.chatwoot_conversation_id == key.conversation_id,
        )
        found = await conn.scalar(select(conversations.c.id).where(where).with_for_update())
        if found is not None:
            return
        values = {
            "id": uuid.uuid4(),
            "account_id": key.account_id,
            "chatwoot_conversation_id": key.conversation_id,
            "created_at": now,
            "updated_at": now,
        }
        if self._postgres:
            await conn.execute(pg_insert(conversations).values(**values).on_conflict_do_nothing())
            await conn.scalar(select(conversations.c.id).where(where).with_for_update())
        else:
            await conn.execute(insert(conversations).values(**values))

    async def _open_buffer(self, conn: AsyncConnection, key: ConversationKey) -> _OpenBuffer | None:
        row = (
            await conn.execute(
                select(
                    buffers.c.id,
                    buffers.c.buffer_start_time,
                    buffers.c.last_message_time,
                    buffers.c.message_count,
                ).where(_in_conversation(buffers, key), buffers.c.status == "active")
            )
        ).first()
        if row is None:
            return None
        return _OpenBuffer(
            id=row.id,
            window=buffer.BufferWindow(
                started_at=row.buffer_start_time,
                last_message_at=row.last_message_time,
                message_count=row.message_count,
            ),
        )

    async def _extend(
        self,
        conn: AsyncConnection,
        key: ConversationKey,
        buffer_id: uuid.UUID,
        placement: buffer.Placement,
        now: datetime,
    ) -> bool:
        result = await conn.execute(
            update(buffers)
            .where(
                _in_conversation(buffers, key),
                buffers.c.id == buffer_id,
                buffers.c.status == "active",
            )
            .values(
                last_message_time=placement.window.last_message_at,
                message_count=placement.window.message_count,
                buffer_end_time=placement.due,
                status="closed" if placement.closes_now else "active",
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return False
        await conn.execute(
            update(jobs)
            .where(
                _in_conversation(jobs, key),
                jobs.c.buffer_id == buffer_id,
                jobs.c.status == "scheduled",
            )
            .values(scheduled_for=placement.due, updated_at=now)
        )
        return True

    async def _close(
        self, conn: AsyncConnection, key: ConversationKey, buffer_id: uuid.UUID, now: datetime
    ) -> None:
        await conn.execute(
            update(buffers)
            .where(
                _in_conversation(buffers, key),
                buffers.c.id == buffer_id,
                buffers.c.status == "active",
            )
            .values(status="closed", updated_at=now)
        )

    async def _open(
        self,
        conn: AsyncConnection,
        key: ConversationKey,
        placement: buffer.Placement,
        now: datetime,
    ) -> uuid.UUID:
        buffer_id = uuid.uuid4()
        await conn.execute(
            insert(buffers).values(
                id=buffer_id,
                account_id=key.account_id,
                conversation_id=key.conversation_id,
                buffer_start_time=placement.window.started_at,
                last_message_time=placement.window.last_message_at,
                buffer_end_time=placement.due,
                status="closed" if placement.closes_now else "active",
                message_count=placement.window.message_count,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(jobs).values(
                id=uuid.uuid4(),
                buffer_id=buffer_id,
                account_id=key.account_id,
                conversation_id=key.conversation_id,
                scheduled_for=placement.due,
                status="scheduled",
                created_at=now,
                updated_at=now,
            )
        )
        return buffer_id

    async def update_attachments(
        self, key: ConversationKey, chatwoot_message_id: int, attachments: Sequence[Attachment]
    ) -> bool:
        """Take a later version of a message's attachments (a voice note's transcript)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(messages)
                .where(
                    _in_conversation(messages, key),
                    messages.c.chatwoot_message_id == chatwoot_message_id,
                )
                .values(attachments=[a.as_json() for a in attachments])
            )
            return bool(result.rowcount)

    async def cancel_open(self, key: ConversationKey, now: datetime, reason: str) -> int:
        """Cancel the conversation's unanswered buffers: a person is answering instead."""
        async with self._engine.begin() as conn:
            await self._lock_conversation(conn, key, now)
            cancelled = (
                (
                    await conn.execute(
                        update(buffers)
                        .where(
                            _in_conversation(buffers, key),
                            buffers.c.status.in_(CLAIMABLE_BUFFER),
                        )
                        .values(
                            status="cancelled", outcome=reason, processed_at=now, updated_at=now
                        )
                        .returning(buffers.c.id)
                    )
                )
                .scalars()
                .all()
            )
            if not cancelled:
                return 0
            await conn.execute(
                update(jobs)
                .where(
                    _in_conversation(jobs, key),
                    jobs.c.buffer_id.in_(cancelled),
                    jobs.c.status.in_(("scheduled", "running")),
                )
                .values(
                    status="cancelled",
                    error_message=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                    processed_at=now,
                    updated_at=now,
                )
            )
            await self._set_idle(conn, key, now)
            return len(cancelled)

    # -- worker ---------------------------------------------------------------------------

    async def claim_due(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        due = or_(
            and_(jobs.c.status == "scheduled", jobs.c.scheduled_for <= now),
            and_(jobs.c.status == "running", jobs.c.lease_expires_at < now),
        )
        candidates = (
            select(jobs.c.id, jobs.c.buffer_id)
            .select_from(jobs.join(buffers, buffers.c.id == jobs.c.buffer_id))
            .where(due, buffers.c.status.in_(CLAIMABLE_BUFFER))
            .order_by(jobs.c.scheduled_for)
            .limit(limit)
            .with_for_update(skip_locked=True, of=[jobs, buffers])
        )
        async with self._engine.begin() as conn:
            picked = (await conn.execute(candidates)).all()
            if not picked:
                return []
            rows = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_([p.id for p in picked]))
                    .values(
                        status="running",
                        lease_owner=owner,
                        lease_expires_at=now + lease,
                        attempts=jobs.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(
                        jobs.c.id,
                        jobs.c.buffer_id,
                        jobs.c.account_id,
                        jobs.c.conversation_id,
                        jobs.c.attempts,
                        jobs.c.scheduled_for,
                    )
                )
            ).all()
            await conn.execute(
                update(buffers)
                .where(buffers.c.id.in_([p.buffer_id for p in picked]))
                .values(status="processing", updated_at=now)
            )
        return [
            ClaimedJob(
                job_id=r.id,
                buffer_id=r.buffer_id,
                key=ConversationKey(r.account_id, r.conversation_id),
                attempts=r.attempts,
                scheduled_for=r.scheduled_for,
                claimed_at=now,
            )
            for r in sorted(rows, key=lambda r: r.scheduled_for)
        ]

    async def next_wake_at(self) -> datetime | None:
        """The earliest instant a job becomes due or a lease runs out."""
        async with self._engine.connect() as conn:
            next_due = await conn.scalar(
                select(func.min(jobs.c.scheduled_for)).where(jobs.c.status == "scheduled")
            )
            next_expiry = await conn.scalar(
                select(func.min(jobs.c.lease_expires_at)).where(jobs.c.status == "running")
            )
        instants = [v for v in (next_due, next_expiry) if v is not None]
        return min(instants) if instants else None

    async def extend_lease(self, job: ClaimedJob, owner: str, until: datetime) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(jobs).where(self._held(job, owner)).values(lease_expires_at=until)
            )
            return result.rowcount == 1

    def _held(self, job: ClaimedJob, owner: str) -> Any:
        return and_(
            _in_conversation(jobs, job.key),
            jobs.c.id == job.job_id,
            jobs.c.status == "running",
            jobs.c.lease_owner == owner,
        )

    async def load(self, job: ClaimedJob, history_limit: int) -> BufferContents:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(conversations)
                .where(
                    conversations.c.account_id == job.key.account_id,
                    conversations.c.chatwoot_conversation_id == job.key.conversation_id,
                    conversations.c.conversation_state != "processing",
                )
                .values(conversation_state="processing", updated_at=job.claimed_at)
            )
            rows = (
                await conn.execute(
                    select(messages)
                    .where(
                        _in_conversation(messages, job.key), messages.c.buffer_id == job.buffer_id
                    )
                    .order_by(messages.c.chatwoot_message_id)
                )
            ).all()
            burst = [_inbound(job.key, r) for r in rows]
            history = await self._history(conn, job, burst, history_limit)
        return BufferContents(messages=burst, history=history)

    async def _history(
        self,
        conn: AsyncConnection,
        job: ClaimedJob,
        burst: Sequence[InboundMessage],
        limit: int,
    ) -> list[HistoryEntry]:
        if limit <= 0 or not burst:
            return []
        before = burst[0].received_at
        earlier = (
            await conn.execute(
                select(messages.c.content, messages.c.attachments, messages.c.received_at)
                .where(
                    _in_conversation(messages, job.key),
                    messages.c.buffer_id != job.buffer_id,
                    messages.c.received_at < before,
                )
                .order_by(messages.c.received_at.desc())
                .limit(limit)
            )
        ).all()
        replies = (
            await conn.execute(
                select(bot_replies.c.content, bot_replies.c.sent_at)
                .where(
                    _in_conversation(bot_replies, job.key),
                    bot_replies.c.kind == "reply",
                    bot_replies.c.sent_at < before,
                )
                .order_by(bot_replies.c.sent_at.desc())
                .limit(limit)
            )
        ).all()
        entries = [
            HistoryEntry(
                role="contact",
                text=describe(
                    InboundMessage(
                        key=job.key,
                        chatwoot_message_id=0,
                        content=r.content,
                        kind="text",
                        content_type="text",
                        received_at=r.received_at,
                        attachments=tuple(Attachment.from_json(a) for a in r.attachments or []),
                    )
                ),
                at=r.received_at,
            )
            for r in earlier
        ] + [HistoryEntry(role="assistant", text=r.content, at=r.sent_at) for r in replies]
        entries.sort(key=lambda e: e.at)
        return entries[-limit:]

    async def still_held(self, job: ClaimedJob, owner: str) -> bool:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.id)
                    .select_from(jobs.join(buffers, buffers.c.id == jobs.c.buffer_id))
                    .where(self._held(job, owner), buffers.c.status == "processing")
                )
            ).first()
            return row is not None

    async def complete(
        self,
        job: ClaimedJob,
        owner: str,
        now: datetime,
        note: str,
        posted: PostedMessage | None = None,
    ) -> bool:
        """Mark the buffer answered, recording what was posted, in one transaction.

        What Chatwoot accepted is recorded even when this worker has lost the lease meanwhile,
        so the conversation's history (and a later duplicate check) knows it was sent.
        """
        async with self._engine.begin() as conn:
            if posted is not None:
                await conn.execute(
                    insert(bot_replies).values(
                        id=uuid.uuid4(),
                        buffer_id=job.buffer_id,
                        account_id=job.key.account_id,
                        conversation_id=job.key.conversation_id,
                        kind=posted.kind,
                        content=posted.content,
                        chatwoot_message_id=posted.chatwoot_message_id,
                        sent_at=now,
                    )
                )
            done = await conn.execute(
                update(jobs)
                .where(self._held(job, owner))
                .values(
                    status="completed",
                    lease_owner=None,
                    lease_expires_at=None,
                    processed_at=now,
                    updated_at=now,
                )
            )
            if done.rowcount != 1:
                return False
            await conn.execute(
                update(buffers)
                .where(
                    _in_conversation(buffers, job.key),
                    buffers.c.id == job.buffer_id,
                    buffers.c.status == "processing",
                )
                .values(status="completed", outcome=note, processed_at=now, updated_at=now)
            )
            await conn.execute(
                update(messages)
                .where(_in_conversation(messages, job.key), messages.c.buffer_id == job.buffer_id)
                .values(processed=True)
            )
            await self._set_idle(conn, job.key, now, only_if_processing=True)
            return True

    async def release_for_retry(
        self, job: ClaimedJob, owner: str, error: str, retry_at: datetime
    ) -> bool:
        async with self._engine.begin() as conn:
            released = await conn.execute(
                update(jobs)
                .where(self._held(job, owner))
                .values(
                    status="scheduled",
                    scheduled_for=retry_at,
                    error_message=error,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=job.claimed_at,
                )
            )
            if released.rowcount != 1:
                return False
            await conn.execute(
                update(buffers)
                .where(
                    _in_conversation(buffers, job.key),
                    buffers.c.id == job.buffer_id,
                    buffers.c.status == "processing",
                )
                .values(status="closed")
            )
            if self._postgres:
                await conn.execute(select(func.pg_notify(WAKE_CHANNEL, retry_at.isoformat())))
            return True

    async def fail(self, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool:
        async with self._engine.begin() as conn:
            failed = await conn.execute(
                update(jobs)
                .where(self._held(job, owner))
                .values(
                    status="failed",
                    error_message=error,
                    lease_owner=None,
                    lease_expires_at=None,
                    processed_at=now,
                    updated_at=now,
                )
            )
            if failed.rowcount != 1:
                return False
            await conn.execute(
                update(buffers)
                .where(
                    _in_conversation(buffers, job.key),
                    buffers.c.id == job.buffer_id,
                    buffers.c.status == "processing",
                )
                .values(status="failed", outcome=error, processed_at=now, updated_at=now)
            )
            await self._set_idle(conn, job.key, now, only_if_processing=True)
            return True

    async def _set_idle(
        self,
        conn: AsyncConnection,
        key: ConversationKey,
        now: datetime,
        *,
        only_if_processing: bool = False,
    ) -> None:
        where = [
            conversations.c.account_id == key.account_id,
            conversations.c.chatwoot_conversation_id == key.conversation_id,
        ]
        values: dict[str, Any] = {"conversation_state": "idle", "updated_at": now}
        if only_if_processing:
            where.append(conversations.c.conversation_state == "processing")
        else:
            values["active_buffer_id"] = None
        await conn.execute(update(conversations).where(*where).values(**values))

    async def flags(self) -> Mapping[str, bool]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(select(feature_flags.c.flag_name, feature_flags.c.is_enabled))
            ).all()
        return {r.flag_name: bool(r.is_enabled) for r in rows}


def _inbound(key: ConversationKey, row: Any) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=row.chatwoot_message_id,
        content=row.content,
        kind=row.message_type,
        content_type=row.content_type or "text",
        received_at=row.received_at,
        attachments=tuple(Attachment.from_json(a) for a in row.attachments or []),
        sender=row.sender_info or {},
        conversation=row.conversation_info or {},
    )
