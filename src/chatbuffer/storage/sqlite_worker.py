"""SQLite: the worker's transactions (the claim, the next wake-up, a held buffer's load, send
check, reservation and outcome), each in one thread hop.

Through the asyncio driver every statement is several hops to aiosqlite's thread and back
(execute, fetch, close; BEGIN and COMMIT too), and a hop is what a buffer's time went to: about
11 ms of CPU and 60 buffers/s for one worker process. Here the same SQLAlchemy statements
(``chatbuffer.storage.statements``) run on SQLAlchemy's blocking driver, on one thread that
holds its own connection: a load, a send reservation or a completion is one hop there and one
answer back. The thread serves one transaction at a time (SQLite serialises writers anyway, and
the worker's own writes then never wait on each other's locks, which SQLite's busy handler
would sleep through); the writes waiting at the same moment share one transaction and its
commit, each under its own savepoint, as the intake's do (``sqlite_intake``): each commit waits
for an fsync. The thread starts on demand and ends after ``IDLE_S`` without work, closing its
connection. Heartbeats stay on their own connection, never queued behind this thread.

Writes begin with ``BEGIN IMMEDIATE``, reads with a deferred ``BEGIN`` (one snapshot), as on
the store's own engine (``database.configure_sqlite``). Leases are compared on the caller's
clock, as everywhere on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, NullPool, create_engine

from chatbuffer.domain.model import Assessment, ConversationKey
from chatbuffer.domain.ports import BufferContents, ClaimedJob, PostedMessage, SendCheck
from chatbuffer.storage import contents, database, writer_queue
from chatbuffer.storage import statements as sql

#: How long the thread waits for work before it closes its connection and ends.
IDLE_S = 2.0
#: At most this many writes share one commit.
MAX_GROUP = 128

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Request:
    work: Callable[[Connection], Any]
    writes: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class SqliteWorker:
    """One thread per database file that runs the worker's transactions."""

    def __init__(self, path: str) -> None:
        self._engine = create_engine(
            f"sqlite+pysqlite:///{path}",
            poolclass=NullPool,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
        )
        database.configure_sqlite(self._engine)
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    async def read(self, work: Callable[[Connection], T]) -> T:
        return await self._submit(work, writes=False)

    async def write(self, work: Callable[[Connection], T]) -> T:
        return await self._submit(work, writes=True)

    async def _submit(self, work: Callable[[Connection], T], *, writes: bool) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._queue.put(_Request(work, writes, future, loop))
            if not self._running:
                self._running = True
                threading.Thread(target=self._serve, name="sqlite-worker", daemon=True).start()
        return await future

    def _serve(self) -> None:
        try:
            conn = self._engine.connect()
        except Exception as exc:
            self._fail_waiting(exc)
            return
        try:
            while (group := self._next_group()) is not None:
                # Reads first: a load is what a just-claimed buffer waits for.
                for request in group:
                    if not request.writes:
                        _answer(request, _read(conn, request))
                writes = [r for r in group if r.writes]
                for request, outcome in zip(writes, _write(conn, writes), strict=True):
                    _answer(request, outcome)
        except BaseException:
            with self._lock:
                self._running = False
            raise
        finally:
            conn.close()

    def _next_group(self) -> list[_Request] | None:
        return writer_queue.next_group(
            self._queue, self._lock, idle_s=IDLE_S, max_group=MAX_GROUP, stop=self._stopped
        )

    def _stopped(self) -> None:
        self._running = False

    def _fail_waiting(self, exc: BaseException) -> None:
        with self._lock:
            self._running = False
            while not self._queue.empty():
                _answer(self._queue.get_nowait(), exc)


def _read(conn: Connection, request: _Request) -> Any:
    conn.execution_options(**{database.READ_ONLY: True})
    try:
        with conn.begin():
            return request.work(conn)
    except Exception as exc:
        return _Failed(exc)


def _write(conn: Connection, writes: list[_Request]) -> list[Any]:
    """The writes waiting together in one transaction, one commit (one fsync) for all, each
    under its own savepoint so that one failing is rolled back alone. None is answered before
    the commit that made it durable."""
    if not writes:
        return []
    conn.execution_options(**{database.READ_ONLY: False})
    outcomes: list[Any] = []
    try:
        with conn.begin():
            if len(writes) == 1:
                return [writes[0].work(conn)]
            for request in writes:
                try:
                    with conn.begin_nested():
                        outcomes.append(request.work(conn))
                except Exception as exc:
                    outcomes.append(_Failed(exc))
    except Exception as exc:
        return [_Failed(exc)] * len(writes)
    return outcomes


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


def _answer(request: _Request, outcome: Any) -> None:
    # The waiting loop may be gone (a test or the process ending): nobody left to answer.
    with contextlib.suppress(RuntimeError):
        request.loop.call_soon_threadsafe(_settle, request.future, outcome)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(outcome, _Failed):
        future.set_exception(outcome.error)
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


# -- the transactions ---------------------------------------------------------------------------


def claim(
    conn: Connection, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[ClaimedJob]:
    """The claim's statements one by one (SQLite has no UPDATE in WITH)."""
    picked = conn.execute(
        sql.CLAIM_CANDIDATES, {"p_now": now, "p_limit": limit, "p_clock": now}
    ).all()
    if not picked:
        return []
    rows = conn.execute(
        sql.CLAIM_JOBS,
        {
            "p_jobs": [(p.account_id, p.conversation_id, p.id) for p in picked],
            "p_owner": owner,
            "p_now": now,
            "p_clock": now,
            "p_lease": lease,
            "p_lease_end": now + lease,
        },
    ).all()
    conn.execute(
        sql.CLAIM_BUFFERS,
        {
            "p_buffers": [(p.account_id, p.conversation_id, p.buffer_id) for p in picked],
            "p_now": now,
        },
    )
    conn.execute(
        sql.MARK_PROCESSING,
        {"p_keys": [(r.account_id, r.conversation_id) for r in rows], "p_now": now},
    )
    return [
        ClaimedJob(
            job_id=r.id,
            buffer_id=r.buffer_id,
            key=ConversationKey(r.account_id, r.conversation_id),
            attempts=r.attempts,
            scheduled_for=r.scheduled_for,
            claimed_at=r.claimed_at,
            last_error=r.error_message,
        )
        for r in sorted(rows, key=lambda r: r.scheduled_for)
    ]


def next_wake(conn: Connection, now: datetime) -> tuple[datetime | None, datetime | None, datetime]:
    """The next due time, the next lease expiry, and the clock's now (the caller's here)."""
    row = conn.execute(sql.NEXT_WAKE, {"p_clock": now}).one()
    return row.next_due, row.next_expiry, row.now


def send_check(conn: Connection, job: ClaimedJob, owner: str) -> SendCheck:
    """``send``, or why not: ``cancelled`` (lost, or a human took over) or ``newer``."""
    row = conn.execute(sql.BEFORE_SEND, sql.held_job(job, owner)).first()
    if row is None:
        return "cancelled"
    return "newer" if row.newer else "send"


def load(
    conn: Connection, job: ClaimedJob, owner: str, history_limit: int, *, backfill: bool = False
) -> BufferContents:
    params = sql.held_job(job, owner)
    check = send_check(conn, job, owner)
    burst = [
        contents.inbound(
            job.key,
            r.chatwoot_message_id,
            r.content,
            r.message_type,
            r.content_type,
            r.received_at,
            r.attachments,
            r.sender_info,
            r.conversation_info,
        )
        for r in conn.execute(sql.BUFFER_MESSAGES, params)
    ]
    memory = conn.execute(sql.MEMORY, params).first()
    summary = (
        contents.summary(memory.summary, memory.summary_through, memory.summary_turns)
        if memory is not None
        else None
    )
    history = []
    if history_limit > 0 and burst:
        window = {
            **params,
            "p_before": burst[0].received_at,
            "p_after": summary.through if summary is not None else contents.NO_SUMMARY,
            "p_limit": history_limit,
        }
        history = contents.turns(
            [
                (r.content, r.attachments, r.received_at)
                for r in conn.execute(sql.EARLIER_MESSAGES, window)
            ],
            [(r.content, r.sent_at) for r in conn.execute(sql.EARLIER_REPLIES, window)],
            history_limit,
            [
                (r.chatwoot_message_id, r.role, r.author, r.content, r.attachments, r.happened_at)
                for r in conn.execute(sql.EARLIER_HISTORY, window)
            ],
        )
    backfill_before = None
    if backfill and (memory is None or memory.backfilled_at is None):
        first = conn.execute(sql.FIRST_STORED, params).one()
        backfill_before = min((i for i in first if i is not None), default=None)
    posted = [
        PostedMessage(r.kind, r.content, r.chatwoot_message_id, r.part)
        for r in conn.execute(sql.BUFFER_POSTED, params)
    ]
    return BufferContents(
        messages=burst,
        history=history,
        posted=posted,
        check=check,
        summary=summary,
        backfill_before=backfill_before,
    )


def record_posted(conn: Connection, job: ClaimedJob, posted: PostedMessage, now: datetime) -> None:
    """Record an intent, or fill in the id of one; a row that already has an id is kept."""
    if posted.chatwoot_message_id is not None:
        confirmed = conn.execute(
            sql.CONFIRM_SENT,
            {
                "p_account_id": job.key.account_id,
                "p_conversation_id": job.key.conversation_id,
                "p_buffer_id": job.buffer_id,
                "p_kind": posted.kind,
                "p_part": posted.part,
                "p_message_id": posted.chatwoot_message_id,
            },
        )
        if confirmed.rowcount:
            return
    # A row of this kind and part already there is kept (the unique key of buffer, kind, part).
    conn.execute(
        sql.RECORD_REPLY,
        {
            "id": uuid.uuid4(),
            "buffer_id": job.buffer_id,
            "account_id": job.key.account_id,
            "conversation_id": job.key.conversation_id,
            "kind": posted.kind,
            "content": posted.content,
            "chatwoot_message_id": posted.chatwoot_message_id,
            "sent_at": now,
            "part": posted.part,
        },
    )


def reserve_send(
    conn: Connection,
    job: ClaimedJob,
    owner: str,
    intent: Sequence[PostedMessage],
    now: datetime,
    hold: timedelta,
) -> SendCheck:
    """Keep the lease for ``hold``, check, record the intent, every part of it (BEGIN IMMEDIATE
    serialises writers, so no conversation lock is needed)."""
    lease = {"p_clock": now, "p_lease": hold, "p_lease_end": now + hold}
    if conn.execute(sql.HOLD_LEASE, {**sql.held_job(job, owner), **lease}).first() is None:
        return "cancelled"
    verdict = send_check(conn, job, owner)
    # Also on "newer": if the burst cannot be folded into the newer buffer, this reply is sent
    # after all. An intent left on a superseded buffer was never posted.
    if verdict != "cancelled":
        for part in intent:
            record_posted(conn, job, part, now)
    return verdict


def complete(
    conn: Connection,
    job: ClaimedJob,
    owner: str,
    now: datetime,
    note: str,
    posted: PostedMessage | None,
    assessment: Assessment | None = None,
) -> bool:
    """What Chatwoot accepted, and the assessment, are recorded even when the lease is lost
    meanwhile."""
    params = {**sql.held_job(job, owner), "p_now": now, "p_note": note}
    if posted is not None:
        record_posted(conn, job, posted, now)
    if assessment is not None:
        conn.execute(sql.RECORD_ASSESSMENT, {**params, **sql.assessment(assessment)})
    if conn.execute(sql.COMPLETE_JOB, params).rowcount != 1:
        return False
    conn.execute(sql.COMPLETE_BUFFER, params)
    conn.execute(sql.MARK_MESSAGES_PROCESSED, params)
    conn.execute(sql.IDLE_IF_PROCESSING, params)
    return True


def release(conn: Connection, job: ClaimedJob, owner: str, error: str, retry_at: datetime) -> bool:
    params = {
        **sql.held_job(job, owner),
        "p_error": error,
        "p_retry_at": retry_at,
        "p_now": job.claimed_at,
    }
    if conn.execute(sql.RETRY_JOB, params).rowcount != 1:
        return False
    conn.execute(sql.RETRY_BUFFER, params)
    return True


def fail(conn: Connection, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool:
    params = {**sql.held_job(job, owner), "p_error": error, "p_note": error, "p_now": now}
    if conn.execute(sql.FAIL_JOB, params).rowcount != 1:
        return False
    conn.execute(sql.FAIL_BUFFER, params)
    conn.execute(sql.IDLE_IF_PROCESSING, params)
    return True
