"""``SqlBufferStore``: the durable buffers, their jobs and the claim, on SQLite or PostgreSQL.

Concurrency, in short:

* One lock order everywhere: every write that touches a conversation's buffers or jobs (intake,
  cancel, supersede, reserving a send, complete, retry, fail, replay) locks the conversation row
  first (on SQLite, where ``BEGIN IMMEDIATE`` serialises every writer, the worker's own
  transactions need no row lock), so they queue up per conversation and never deadlock with
  each other, while different conversations proceed in parallel. The rest never wait while
  holding a lock they need: the claim skips locked rows, a heartbeat touches only its own jobs.
  Every statement is keyed by (account_id, conversation_id).
* The claim is the one cross-conversation write. On PostgreSQL it locks job and buffer rows with
  ``FOR UPDATE ... SKIP LOCKED`` and never waits, so it cannot deadlock with intake; a buffer that
  intake is extending right now is simply skipped and picked up on the next wake-up. On SQLite
  every write transaction is ``BEGIN IMMEDIATE``, so writers are serialised.
* Extending a buffer is conditional on it still being ``active``: if a worker claimed it a moment
  earlier, the message opens a new buffer instead of joining one whose reply is being written.
* Finishing a job is conditional on still holding its lease, so a worker that lost its lease
  cannot overwrite the new holder's result.
* Leases and due times are compared on one clock: the database's on PostgreSQL, so a worker host
  whose clock is skewed can neither take a live lease nor hold one too long; the caller's on
  SQLite (one host) and when ``database_clock=False`` (tests driving a fake clock). Reserving a
  send keeps the lease for at least the Chatwoot timeout plus a margin, so no other worker can
  take the buffer over while the POST may still land. Heartbeats run on their own connection
  (``heartbeat_engine``), never queued behind the pool.

The statements themselves are prebuilt in :mod:`chatbuffer.storage.statements`. A held buffer's
transactions (load, send check, reservation, completion, retry, failure) and on PostgreSQL the
claim and the next-wake query are the hot path: one round trip each on PostgreSQL
(:mod:`chatbuffer.storage.pg_worker`, migration 0007's functions), one thread hop each on SQLite
(:mod:`chatbuffer.storage.sqlite_worker`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatbuffer.domain import buffer
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import (
    Assessment,
    Attachment,
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
)
from chatbuffer.domain.ports import (
    BufferContents,
    BufferSummary,
    ClaimedJob,
    IntakeResult,
    PostedMessage,
    ReplayResult,
    SendCheck,
)
from chatbuffer.storage import (
    contents,
    database,
    pg_intake,
    pg_worker,
    sqlite_intake,
    sqlite_worker,
)
from chatbuffer.storage import statements as sql

WAKE_CHANNEL = sql.WAKE_CHANNEL


@dataclass(frozen=True, slots=True)
class _Conversation:
    """The locked conversation row: whether a human holds it, and how many messages it has had."""

    human_active_until: datetime | None
    message_count: int


_NEW_CONVERSATION = _Conversation(human_active_until=None, message_count=0)

#: How long a reserved send keeps the lease when the caller does not say: the default Chatwoot
#: timeout plus a margin for the round trips around the POST.
DEFAULT_SEND_HOLD = timedelta(seconds=12)


def _key(key: ConversationKey) -> dict[str, Any]:
    return {"p_account_id": key.account_id, "p_conversation_id": key.conversation_id}


def _held(job: ClaimedJob, owner: str) -> dict[str, Any]:
    return {**_key(job.key), "p_job_id": job.job_id, "p_owner": owner}


class SqlBufferStore:
    """The store's ports over SQLAlchemy Core, on one engine.

    Implements :class:`~chatbuffer.domain.ports.IntakeStore`, ``JobQueue``,
    ``ConversationHistory``, ``ConversationMemory``, ``SendLedger`` and
    ``BufferAdmin``; the wake-ups
    (``WakeSignals``) are :class:`chatbuffer.storage.listener.PgWakeListener`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        database_clock: bool | None = None,
        heartbeat_engine: AsyncEngine | None = None,
        intake_batch: int = 64,
    ) -> None:
        """``database_clock``: compare leases and due times on PostgreSQL's clock (the default
        there) instead of the ``now`` callers pass; SQLite always uses the caller's.
        ``heartbeat_engine``: a one-connection engine for heartbeats, apart from the pool.
        ``intake_batch``: at most this many webhooks stored in one transaction (PostgreSQL)."""
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        path = engine.url.database or ""
        self._sqlite_intake = None if self._postgres else sqlite_intake.SqliteIntake(path)
        self._sqlite_worker = None if self._postgres else sqlite_worker.SqliteWorker(path)
        self._pg_intake = pg_intake.IntakeBatches(engine, max_batch=intake_batch)
        self._pg_calls = pg_worker.DriverCalls(engine)
        self._database_clock = self._postgres and database_clock is not False
        self._heartbeat_engine = heartbeat_engine or engine

    def _clock(self, now: datetime) -> dict[str, Any]:
        """The ``p_clock`` of ``statements.CLOCK``: NULL selects the database's own clock."""
        return {"p_clock": None if self._database_clock else now}

    def _lease(self, now: datetime, lease: timedelta) -> dict[str, Any]:
        """The parameters of ``statements.LEASE_END``: ``lease`` from now on that clock."""
        return {**self._clock(now), "p_lease": lease, "p_lease_end": now + lease}

    @staticmethod
    async def _lock(conn: AsyncConnection, key: ConversationKey) -> None:
        """Take the conversation's row lock, the first lock of every write (module docstring)."""
        await conn.execute(sql.LOCK_CONVERSATION, _key(key))

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield await conn.execution_options(**{database.READ_ONLY: True})

    async def ping(self) -> None:
        async with self._reading() as conn:
            await conn.execute(text("SELECT 1"))

    # -- intake ---------------------------------------------------------------------------

    async def record_incoming(
        self, message: InboundMessage, policy: buffer.BufferPolicy, now: datetime
    ) -> IntakeResult:
        """Store one incoming message: one round trip on PostgreSQL, one thread hop on SQLite."""
        if self._sqlite_intake is not None:
            return await self._sqlite_intake.record(message, policy, now)
        return await self._pg_intake.record(message, policy, now)

    async def _lock_conversation(
        self, conn: AsyncConnection, key: ConversationKey, now: datetime
    ) -> _Conversation:
        """Lock (creating if needed) the conversation row and read it."""
        params = _key(key)
        found = (await conn.execute(sql.LOCK_CONVERSATION, params)).first()
        if found is not None:
            return _Conversation(found.human_active_until, found.message_count)
        row = {
            "id": uuid.uuid4(),
            "account_id": key.account_id,
            "chatwoot_conversation_id": key.conversation_id,
            "created_at": now,
            "updated_at": now,
        }
        if self._postgres:
            # Two first messages of a new conversation may race here; one insert wins and
            # both then queue on the row lock.
            await conn.execute(sql.INSERT_CONVERSATION_PG, row)
            locked = (await conn.execute(sql.LOCK_CONVERSATION, params)).first()
            if locked is None:
                return _NEW_CONVERSATION
            return _Conversation(locked.human_active_until, locked.message_count)
        await conn.execute(sql.INSERT_CONVERSATION, row)
        return _NEW_CONVERSATION

    async def update_attachments(
        self, key: ConversationKey, chatwoot_message_id: int, attachments: Sequence[Attachment]
    ) -> bool:
        """Take a later version of a message's attachments (a voice note's transcript)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sql.UPDATE_ATTACHMENTS,
                {
                    **_key(key),
                    "p_message_id": chatwoot_message_id,
                    "p_attachments": [a.as_json() for a in attachments],
                },
            )
            return bool(result.rowcount)

    async def cancel_open(
        self,
        key: ConversationKey,
        now: datetime,
        reason: str,
        pause_until: datetime | None = None,
    ) -> int:
        """Cancel the conversation's unanswered buffers; with ``pause_until``, keep the bot
        out of the conversation until then (a person is answering instead)."""
        async with self._engine.begin() as conn:
            return await self._cancel(conn, key, now, reason, pause_until)

    async def _cancel(
        self,
        conn: AsyncConnection,
        key: ConversationKey,
        now: datetime,
        reason: str,
        pause_until: datetime | None,
        *,
        locked: bool = False,
    ) -> int:
        params = {**_key(key), "p_now": now, "p_reason": reason, "p_until": pause_until}
        if not locked:
            await self._lock_conversation(conn, key, now)
        if pause_until is not None:
            await conn.execute(sql.PAUSE_BOT, params)
        cancelled = (await conn.execute(sql.CANCEL_BUFFERS, params)).scalars().all()
        if not cancelled:
            return 0
        await conn.execute(sql.CANCEL_JOBS, {**params, "p_buffer_ids": list(cancelled)})
        await conn.execute(sql.CONVERSATION_IDLE, params)
        return len(cancelled)

    async def record_agent_message(
        self,
        key: ConversationKey,
        message: HistoryEntry,
        now: datetime,
        reason: str,
        pause_until: datetime | None = None,
    ) -> int:
        """Keep a human agent's public message for the history and cancel the conversation's
        unanswered buffers (``cancel_open``), in one transaction."""
        row = contents.history_row(key, message, "webhook", now)
        async with self._engine.begin() as conn:
            await self._lock_conversation(conn, key, now)
            await conn.execute(
                sql.RECORD_HISTORY_PG if self._postgres else sql.RECORD_HISTORY_SQLITE, row
            )
            return await self._cancel(conn, key, now, reason, pause_until, locked=True)

    async def keep_contact_message(
        self, key: ConversationKey, message: HistoryEntry, now: datetime
    ) -> None:
        """Keep a contact's message the bot will not answer, for the history only."""
        row = contents.history_row(key, message, "webhook", now)
        async with self._engine.begin() as conn:
            await conn.execute(
                sql.RECORD_HISTORY_PG if self._postgres else sql.RECORD_HISTORY_SQLITE, row
            )

    async def resume_bot(self, key: ConversationKey, now: datetime) -> bool:
        """End a human takeover pause early (the conversation was handed back to the bot)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(sql.RESUME_BOT, {**_key(key), "p_now": now})
            return bool(result.rowcount)

    async def close_now(
        self, key: ConversationKey, buffer_id: uuid.UUID, now: datetime, reason: str
    ) -> bool:
        """Stop a collecting buffer collecting and make it due now, waking the workers."""
        params = {**_key(key), "p_buffer_id": buffer_id, "p_now": now, "p_reason": reason}
        async with self._engine.begin() as conn:
            await self._lock(conn, key)
            closed = await conn.execute(sql.CLOSE_BUFFER_NOW, params)
            if not closed.rowcount:
                return False
            await conn.execute(sql.DUE_NOW, params)
            await conn.execute(sql.CONVERSATION_IDLE, params)
            if self._postgres:
                await conn.execute(sql.NOTIFY, {"p_payload": now.isoformat()})
        return True

    # -- worker ---------------------------------------------------------------------------

    async def claim_due(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.write(
                lambda conn: sqlite_worker.claim(conn, now, owner, lease, limit)
            )
        clock = None if self._database_clock else now
        return await pg_worker.claim(self._pg_calls, now, owner, lease, limit, clock)

    async def next_wake_at(self, now: datetime) -> datetime | None:
        """The earliest instant a job becomes due or a lease runs out, on the caller's clock
        (``now`` is the caller's present)."""
        if self._sqlite_worker is not None:
            due, expiry, then = await self._sqlite_worker.read(
                lambda conn: sqlite_worker.next_wake(conn, now)
            )
        else:
            clock = None if self._database_clock else now
            due, expiry, then = await pg_worker.next_wake(self._pg_calls, clock)
        instants = [v for v in (due, expiry) if v is not None]
        if not instants:
            return None
        # Measured on the database's clock: the distance from its now is what the caller waits.
        wake: datetime = now + (min(instants) - then)
        return wake

    async def heartbeat(
        self, owner: str, jobs: Sequence[ClaimedJob], lease: timedelta, now: datetime
    ) -> set[uuid.UUID]:
        """Renew the lease of every job in ``jobs`` in one statement, on the heartbeat's own
        connection; returns the ids of those ``owner`` still holds (the rest are lost)."""
        if not jobs:
            return set()
        params = {
            "p_jobs": [(j.key.account_id, j.key.conversation_id, j.job_id) for j in jobs],
            "p_owner": owner,
            **self._lease(now, lease),
        }
        async with self._heartbeat_engine.begin() as conn:
            return set((await conn.execute(sql.HEARTBEAT, params)).scalars())

    async def load(
        self, job: ClaimedJob, owner: str, history_limit: int, *, backfill: bool = False
    ) -> BufferContents:
        """The burst, the summary and the history after it, earlier intents and the send check,
        in one snapshot: one function call on PostgreSQL, one read transaction in one thread hop
        on SQLite."""
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.read(
                lambda conn: sqlite_worker.load(conn, job, owner, history_limit, backfill=backfill)
            )
        return await pg_worker.load(self._pg_calls, job, owner, history_limit, backfill=backfill)

    # -- conversation memory (not part of a buffer's transactions) -------------------------

    async def record_backfill(
        self, key: ConversationKey, entries: Sequence[HistoryEntry], now: datetime
    ) -> None:
        """Keep the history fetched from Chatwoot and note the fetch, in one transaction."""
        rows = [contents.history_row(key, e, "chatwoot", now) for e in entries]
        memory = {**_memory_row(key, now), "backfilled_at": now}
        async with self._engine.begin() as conn:
            if rows:
                await conn.execute(
                    sql.RECORD_HISTORY_PG if self._postgres else sql.RECORD_HISTORY_SQLITE, rows
                )
            await conn.execute(
                sql.MARK_BACKFILLED_PG if self._postgres else sql.MARK_BACKFILLED_SQLITE, memory
            )

    async def save_summary(
        self, key: ConversationKey, summary: ConversationSummary, now: datetime
    ) -> bool:
        row = {
            **_memory_row(key, now),
            "summary": summary.text,
            "summary_through": summary.through,
            "summary_turns": summary.turns,
            "summarized_at": now,
        }
        async with self._engine.begin() as conn:
            # A row comes back only when one was written (the rowcount of an upsert whose
            # condition refused the update is not 0 on every driver).
            result = await conn.execute(
                sql.SAVE_SUMMARY_PG if self._postgres else sql.SAVE_SUMMARY_SQLITE, row
            )
            return result.first() is not None

    async def before_send(self, job: ClaimedJob, owner: str) -> SendCheck:
        """Whether the buffer may still be answered: ``send``, ``cancelled`` (lost, or a
        human took over) or ``newer`` (the contact wrote again since it closed)."""
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.read(
                lambda conn: sqlite_worker.send_check(conn, job, owner)
            )
        return await pg_worker.send_check(self._pg_calls, job, owner)

    async def reserve_send(
        self,
        job: ClaimedJob,
        owner: str,
        intent: PostedMessage | Sequence[PostedMessage],
        now: datetime,
        *,
        hold: timedelta = DEFAULT_SEND_HOLD,
    ) -> SendCheck:
        """``before_send``, the intent recorded, and the lease kept for at least ``hold`` (the
        Chatwoot timeout plus a margin) on the database's clock, all in one transaction: a
        ``send`` verdict means no other worker can take the buffer over before the POST has
        landed or timed out."""
        parts = [intent] if isinstance(intent, PostedMessage) else list(intent)
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.write(
                lambda conn: sqlite_worker.reserve_send(conn, job, owner, parts, now, hold)
            )
        clock = None if self._database_clock else now
        return await pg_worker.reserve_send(self._pg_calls, job, owner, parts, now, clock, hold)

    async def confirm_sent(
        self, key: ConversationKey, marker: Marker, chatwoot_message_id: int
    ) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sql.CONFIRM_SENT,
                {
                    **_key(key),
                    "p_buffer_id": marker.buffer_id,
                    "p_kind": marker.kind,
                    "p_part": marker.part,
                    "p_message_id": chatwoot_message_id,
                },
            )
            return bool(result.rowcount)

    async def supersede(
        self, job: ClaimedJob, owner: str, now: datetime, policy: buffer.BufferPolicy
    ) -> uuid.UUID | None:
        """Fold this buffer's messages into the conversation's newer open buffer.

        Returns the buffer that now holds them, or None, in which case nothing changed and this
        buffer is answered with its own messages: it was closed by a cap, its first message is
        already past the age cap (``buffer.may_fold``), there is nothing newer or it is being
        processed already, the merge would exceed the size cap, or the lease was lost. The newer
        buffer inherits the older one's age, so it is due by the cap of the oldest message.
        """
        params: dict[str, Any] = {
            **_held(job, owner),
            **self._clock(now),
            "p_buffer_id": job.buffer_id,
            "p_now": now,
            "p_note": "superseded: the contact wrote again while the reply was being written",
        }
        async with self._engine.begin() as conn:
            await self._lock(conn, job.key)
            stale = (await conn.execute(sql.STALE_BUFFER, params)).first()
            if stale is None:
                return None
            window = _window(stale)
            if not buffer.may_fold(window, stale.buffer_end_time, policy, stale.now):
                return None
            newer = (await conn.execute(sql.NEWER_BUFFER, params)).first()
            if newer is None or newer.message_count + window.message_count > policy.max_size:
                return None
            if (await conn.execute(sql.COMPLETE_JOB, params)).rowcount != 1:
                return None
            grown = buffer.merged(window, _window(newer))
            due = buffer.due_at(grown, policy)
            await conn.execute(sql.SUPERSEDE_BUFFER, params)
            params.update(
                p_into=newer.id,
                p_moved=window.message_count,
                p_start=grown.started_at,
                p_due=due,
                # Already past the oldest message's cap (or full): it takes no more messages.
                p_status="closed" if due <= stale.now else newer.status,
            )
            await conn.execute(sql.MOVE_MESSAGES, params)
            await conn.execute(sql.GROW_BUFFER, params)
            await conn.execute(sql.GROWN_JOB, params)
            await self._wake_waiting(conn, params)
            new_id: uuid.UUID = newer.id
            return new_id

    async def complete(
        self,
        job: ClaimedJob,
        owner: str,
        now: datetime,
        note: str,
        posted: PostedMessage | None = None,
        *,
        assessment: Assessment | None = None,
    ) -> bool:
        """Mark the buffer answered, recording what was posted and the assessment, in one
        transaction.

        What Chatwoot accepted is recorded even when this worker has lost the lease meanwhile,
        so the conversation's history (and a later duplicate check) knows it was sent.
        """
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.write(
                lambda conn: sqlite_worker.complete(conn, job, owner, now, note, posted, assessment)
            )
        return await pg_worker.complete(self._pg_calls, job, owner, now, note, posted, assessment)

    async def _wake_waiting(self, conn: AsyncConnection, params: Mapping[str, Any]) -> None:
        """Tell other processes' workers about a buffer this one's end lets through (in this
        process the scheduler looks again as each buffer finishes)."""
        if self._postgres:
            await conn.execute(sql.WAKE_WAITING, params)

    async def release_for_retry(
        self, job: ClaimedJob, owner: str, error: str, retry_at: datetime
    ) -> bool:
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.write(
                lambda conn: sqlite_worker.release(conn, job, owner, error, retry_at)
            )
        return await pg_worker.release(self._pg_calls, job, owner, error, retry_at)

    async def fail(self, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool:
        if self._sqlite_worker is not None:
            return await self._sqlite_worker.write(
                lambda conn: sqlite_worker.fail(conn, job, owner, error, now)
            )
        return await pg_worker.fail(self._pg_calls, job, owner, error, now)

    # -- admin ----------------------------------------------------------------------------

    async def list_buffers(
        self, status: str, limit: int, key: ConversationKey | None = None
    ) -> list[BufferSummary]:
        params: dict[str, Any] = {"p_status": status, "p_limit": limit}
        statement = sql.LIST_BUFFERS
        if key is not None:
            params.update(_key(key))
            statement = sql.LIST_CONVERSATION_BUFFERS
        async with self._reading() as conn:
            return [_summary(r) for r in await conn.execute(statement, params)]

    async def replay(
        self, buffer_id: uuid.UUID, now: datetime
    ) -> tuple[ReplayResult, BufferSummary | None]:
        """Put a failed buffer back in the queue, due now, with its attempts reset.

        What an earlier attempt recorded (an unconfirmed reply, say) is kept, so the replay
        checks Chatwoot for it before posting anything. Refused (``out_of_order``) once a newer
        buffer of the conversation is being or was answered, or cancelled by a human: the old
        burst would be answered after the newer one. Newer buffers still waiting wait for it.
        """
        async with self._engine.begin() as conn:
            found = (
                await conn.execute(sql.BUFFER_SUMMARY, {"p_buffer_id": buffer_id, "p_limit": 1})
            ).first()
            if found is None:
                return "not_found", None
            key = ConversationKey(found.account_id, found.conversation_id)
            params = {**_key(key), "p_buffer_id": buffer_id, "p_now": now}
            await self._lock(conn, key)
            if found.status != "failed":
                return "not_failed", _summary(found)
            later = (await conn.execute(sql.LATER_BUFFERS, params)).scalars().all()
            if _ANSWERED.intersection(later):
                return "out_of_order", _summary(found)
            if (await conn.execute(sql.REPLAY_BUFFER, params)).rowcount != 1:
                return "not_failed", _summary(found)
            await conn.execute(sql.REPLAY_JOB, params)
            await conn.execute(sql.DROP_UNSENT_FAILURE_NOTES, params)
            if self._postgres:
                await conn.execute(sql.NOTIFY, {"p_payload": now.isoformat()})
            after = (
                await conn.execute(sql.BUFFER_SUMMARY, {"p_buffer_id": buffer_id, "p_limit": 1})
            ).first()
        return "scheduled", _summary(after)


#: Statuses of a newer buffer that make replaying an older one answer out of order.
_ANSWERED = frozenset({"processing", "completed", "cancelled"})


def _memory_row(key: ConversationKey, now: datetime) -> dict[str, Any]:
    """A ``conversation_memory`` row with nothing remembered yet."""
    return {
        "account_id": key.account_id,
        "conversation_id": key.conversation_id,
        "summary": None,
        "summary_through": None,
        "summary_turns": 0,
        "summarized_at": None,
        "backfilled_at": None,
        "created_at": now,
        "updated_at": now,
    }


def _window(row: Any) -> buffer.BufferWindow:
    return buffer.BufferWindow(
        started_at=row.buffer_start_time,
        last_message_at=row.last_message_time,
        message_count=row.message_count,
    )


def _summary(row: Any) -> BufferSummary:
    return BufferSummary(
        buffer_id=row.id,
        key=ConversationKey(row.account_id, row.conversation_id),
        status=row.status,
        message_count=row.message_count,
        attempts=row.attempts,
        error=row.error_message,
        outcome=row.outcome,
        updated_at=row.updated_at,
        due_at=row.scheduled_for,
    )
