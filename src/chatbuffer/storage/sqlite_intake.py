"""SQLite intake: the whole transaction in one thread hop, commits grouped.

SQLite serialises writers anyway, and each commit waits for an fsync (``synchronous=FULL``, about
0.7 ms here), which caps one-commit-per-webhook near 1,400/s however fast the code is. So intake
runs on one writer thread with its own ``sqlite3`` connection: a webhook hands its message over
once and waits for one answer, and the thread takes every message waiting at that moment into one
``BEGIN IMMEDIATE`` transaction, each under its own savepoint (a failing message is rolled back
alone), then commits once. Nothing is answered before the commit that made it durable.

The statements are written for the schema :mod:`chatbuffer.storage.tables` declares, with values
stored the way SQLAlchemy stores them on SQLite (naive UTC timestamps as text with microseconds,
UUIDs as 32 hex digits, JSON as text), so every other reader sees the same rows. The placement
rule is :func:`chatbuffer.domain.buffer.place` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from chatbuffer.domain import buffer
from chatbuffer.domain.model import InboundMessage
from chatbuffer.domain.ports import IntakeResult
from chatbuffer.errors import StorageUnavailable
from chatbuffer.storage import writer_queue
from chatbuffer.storage.intake_result import DUPLICATE, human_holds

#: How long the writer thread waits for work before it closes its connection and ends.
IDLE_S = 2.0
#: The engine's connection settings (storage/database.py): WAL, and FULL so an acknowledged
#: webhook survives power loss.
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000")
#: At most this many webhooks share one commit.
MAX_GROUP = 128


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Request:
    message: InboundMessage
    policy: buffer.BufferPolicy
    now: datetime
    future: asyncio.Future[IntakeResult]
    loop: asyncio.AbstractEventLoop


def record(
    conn: sqlite3.Connection, message: InboundMessage, policy: buffer.BufferPolicy, now: datetime
) -> IntakeResult:
    """The intake transaction's statements (the caller holds the write lock)."""
    key = (message.key.account_id, message.key.conversation_id)
    stamp = _ts(now)
    found = conn.execute(
        "SELECT human_active_until, message_count FROM conversations"
        " WHERE account_id = ? AND chatwoot_conversation_id = ?",
        key,
    ).fetchone()
    if found is None:
        conn.execute(
            "INSERT INTO conversations (id, account_id, chatwoot_conversation_id, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?)",
            (uuid.uuid4().hex, *key, stamp, stamp),
        )
        human_until, sequence = None, 0
    else:
        human_until, sequence = _time(found[0]), found[1]
    if human_until is not None and now < human_until:
        return human_holds(human_until)
    if conn.execute(
        "SELECT 1 FROM buffered_messages"
        " WHERE account_id = ? AND conversation_id = ? AND chatwoot_message_id = ?",
        (*key, message.chatwoot_message_id),
    ).fetchone():
        return DUPLICATE
    current = conn.execute(
        "SELECT id, buffer_start_time, last_message_time, message_count FROM message_buffer"
        " WHERE account_id = ? AND conversation_id = ? AND status = 'active'",
        key,
    ).fetchone()
    window = None
    if current is not None:
        window = buffer.BufferWindow(_time(current[1]), _time(current[2]), current[3])  # type: ignore[arg-type]
    placement = buffer.place(window, policy, now)
    buffer_id: str | None = None
    status = "closed" if placement.closes_now else "active"
    if current is not None and not placement.opens_new:
        buffer_id = current[0]
        conn.execute(
            "UPDATE message_buffer SET last_message_time = ?, message_count = ?,"
            " buffer_end_time = ?, status = ?, updated_at = ?"
            " WHERE account_id = ? AND conversation_id = ? AND id = ? AND status = 'active'",
            (
                _ts(placement.window.last_message_at),
                placement.window.message_count,
                _ts(placement.due),
                status,
                stamp,
                *key,
                buffer_id,
            ),
        )
        conn.execute(
            "UPDATE buffer_processing_jobs SET scheduled_for = ?, updated_at = ?"
            " WHERE account_id = ? AND conversation_id = ? AND buffer_id = ?"
            " AND status = 'scheduled'",
            (_ts(placement.due), stamp, *key, buffer_id),
        )
    else:
        if current is not None:
            conn.execute(
                "UPDATE message_buffer SET status = 'closed', updated_at = ?"
                " WHERE account_id = ? AND conversation_id = ? AND id = ? AND status = 'active'",
                (stamp, *key, current[0]),
            )
        buffer_id = uuid.uuid4().hex
        due = _ts(placement.due)
        conn.execute(
            "INSERT INTO message_buffer (id, account_id, conversation_id, buffer_start_time,"
            " last_message_time, buffer_end_time, status, message_count, conversation_seq,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            (buffer_id, *key, stamp, stamp, due, status, sequence, stamp, stamp),
        )
        conn.execute(
            "INSERT INTO buffer_processing_jobs (id, buffer_id, account_id, conversation_id,"
            " scheduled_for, status, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'scheduled', ?, ?)",
            (uuid.uuid4().hex, buffer_id, *key, due, stamp, stamp),
        )
    conn.execute(
        "INSERT INTO buffered_messages (id, buffer_id, account_id, conversation_id,"
        " chatwoot_message_id, content, message_type, content_type, attachments, sender_info,"
        " conversation_info, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            uuid.uuid4().hex,
            buffer_id,
            *key,
            message.chatwoot_message_id,
            message.content,
            message.kind,
            message.content_type,
            json.dumps([a.as_json() for a in message.attachments]),
            json.dumps(message.sender),
            json.dumps(message.conversation),
            stamp,
        ),
    )
    conn.execute(
        "UPDATE conversations SET active_buffer_id = ?, last_message_at = ?,"
        " message_count = message_count + 1, conversation_state = ?, updated_at = ?"
        " WHERE account_id = ? AND chatwoot_conversation_id = ?",
        (
            None if placement.closes_now else buffer_id,
            stamp,
            "idle" if placement.closes_now else "buffering",
            stamp,
            *key,
        ),
    )
    return IntakeResult(
        stored=True,
        buffer_id=uuid.UUID(hex=buffer_id),
        opened_buffer=placement.opens_new,
        message_count=placement.window.message_count,
        due_at=placement.due,
        closed=placement.closes_now,
    )


class SqliteIntake:
    """One writer thread per database file; started on demand, ended after ``IDLE_S``."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    async def record(
        self, message: InboundMessage, policy: buffer.BufferPolicy, now: datetime
    ) -> IntakeResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IntakeResult] = loop.create_future()
        with self._lock:
            self._queue.put(_Request(message, policy, now, future, loop))
            if not self._running:
                self._running = True
                threading.Thread(target=self._serve, name="sqlite-intake", daemon=True).start()
        return await future

    def _serve(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            self._fail_waiting(exc)
            return
        try:
            while (group := self._next_group()) is not None:
                self._commit(conn, group)
        finally:
            conn.close()
            with self._lock:
                self._running = False

    def _next_group(self) -> list[_Request] | None:
        return writer_queue.next_group(
            self._queue, self._lock, idle_s=IDLE_S, max_group=MAX_GROUP, stop=self._stopped
        )

    def _stopped(self) -> None:
        self._running = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        for pragma in PRAGMAS:
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def _commit(self, conn: sqlite3.Connection, group: list[_Request]) -> None:
        outcomes: list[IntakeResult | BaseException] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in group:
                conn.execute("SAVEPOINT intake")
                try:
                    outcomes.append(record(conn, request.message, request.policy, request.now))
                except Exception as exc:
                    conn.execute("ROLLBACK TO intake")
                    outcomes.append(exc)
                conn.execute("RELEASE intake")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [exc] * len(group)
        for request, outcome in zip(group, outcomes, strict=True):
            _answer(request, outcome)

    def _fail_waiting(self, exc: BaseException) -> None:
        with self._lock:
            self._running = False
            while not self._queue.empty():
                _answer(self._queue.get_nowait(), exc)


def _answer(request: _Request, outcome: IntakeResult | BaseException) -> None:
    # The waiting loop may be gone (a test or the process ending): nobody left to answer.
    with contextlib.suppress(RuntimeError):
        request.loop.call_soon_threadsafe(_settle, request.future, outcome)


def _settle(future: asyncio.Future[IntakeResult], outcome: IntakeResult | BaseException) -> None:
    if future.done():  # the webhook's request was cancelled meanwhile
        return
    if isinstance(outcome, sqlite3.Error):
        # Not stored: the sender must retry. No message text in the error.
        error = StorageUnavailable(f"the database is unavailable ({type(outcome).__name__})")
        future.set_exception(error)
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
