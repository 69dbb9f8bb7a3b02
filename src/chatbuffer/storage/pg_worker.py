"""PostgreSQL: the claim and a held buffer's transactions as one call each of a function
(migrations 0007, 0008 and 0013).

Like the intake (``pg_intake``), each call is one statement in autocommit, so one transaction
and one round trip, with no BEGIN, COMMIT or ping, made on a psycopg connection of SQLAlchemy's
pool that the worker keeps between calls (``DriverCalls``): SQLAlchemy's execution layer costs
about as much CPU per statement as the database round trip (see ``statements``). When the
driver call fails, the same call is made once more through SQLAlchemy, whose error handling
recognises a connection a database restart broke, drops the pool's stale connections and
reconnects; only then does the error reach the caller.
Making a call twice is safe: a load only reads; a reservation finds its intent recorded and the
lease already kept; a completion, retry or failure finds the job no longer running and reports
the lease lost, which is what the first call left behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from chatbuffer.domain.model import (
    Assessment,
    ConversationKey,
    ConversationSummary,
    InboundMessage,
)
from chatbuffer.domain.ports import BufferContents, ClaimedJob, PostedMessage, SendCheck
from chatbuffer.storage import contents
from chatbuffer.storage import statements as sql

LOAD = (
    "SELECT part, message_id, body, message_type, content_type, attachments, sender_info,"
    " conversation_info, happened_at, kind, author, turns FROM chatbuffer_load(%(p_account_id)s,"
    " %(p_conversation_id)s, %(p_job_id)s, %(p_buffer_id)s, %(p_owner)s, %(p_history_limit)s,"
    " %(p_backfill)s)"
)
SEND_CHECK = (
    "SELECT chatbuffer_send_check(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s)"
)
RESERVE_SEND = (
    "SELECT chatbuffer_reserve_parts(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_clock)s, %(p_hold)s, %(p_kind)s, %(p_parts)s,"
    " %(p_first_part)s, %(p_now)s)"
)
COMPLETE = (
    "SELECT chatbuffer_complete(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_note)s, %(p_kind)s, %(p_content)s,"
    " %(p_message_id)s)"
)
COMPLETE_ASSESSED = (
    "SELECT chatbuffer_complete_assessed(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_note)s, %(p_kind)s, %(p_content)s,"
    " %(p_message_id)s, %(p_urgency)s, %(p_intent)s, %(p_actions)s, %(p_confidence)s,"
    " %(p_should_respond)s)"
)
RELEASE = (
    "SELECT chatbuffer_release(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_error)s, %(p_retry_at)s)"
)
#: ``statements.CLAIM`` as migration 0013's function: a call short enough for psycopg to prepare,
#: running a statement plpgsql plans once per connection (the statement itself, 4.3 kB, was
#: parsed and planned on every call).
CLAIM = (
    "SELECT job_id, buffer_id, account_id, conversation_id, attempts, scheduled_for,"
    " error_message, claimed_at FROM chatbuffer_claim(%(p_now)s, %(p_owner)s, %(p_lease)s,"
    " %(p_limit)s, %(p_clock)s)"
)
FAIL = (
    "SELECT chatbuffer_fail(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_error)s)"
)


class _Compiled:
    """A statement of :mod:`chatbuffer.storage.statements`, compiled once for psycopg: the same
    SQL SQLAlchemy would send, with the values it binds itself (the SQL literals)."""

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._sql: str | None = None
        self._defaults: dict[str, Any] = {}

    def prepare(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if self._sql is None:
            compiled = self._statement.compile(dialect=dialect)
            self._defaults = {k: v for k, v in compiled.params.items() if v is not None}
            self._sql = str(compiled)
        return self._sql, {**self._defaults, **params}


_NEXT_WAKE = _Compiled(sql.NEXT_WAKE)


def _posted(posted: PostedMessage | None) -> dict[str, Any]:
    if posted is None:
        return {"p_kind": None, "p_content": None, "p_message_id": None}
    return {
        "p_kind": posted.kind,
        "p_content": posted.content,
        "p_message_id": posted.chatwoot_message_id,
    }


async def claim(
    calls: DriverCalls,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    clock: datetime | None,
) -> list[ClaimedJob]:
    """``statements.CLAIM`` (``chatbuffer_claim``): one statement, so one transaction, in
    autocommit."""
    params = {"p_now": now, "p_limit": limit, "p_owner": owner, "p_clock": clock, "p_lease": lease}
    rows = await calls.run(CLAIM, params)
    jobs = [
        ClaimedJob(
            job_id=job_id,
            buffer_id=buffer_id,
            key=ConversationKey(account_id, conversation_id),
            attempts=attempts,
            scheduled_for=scheduled_for.astimezone(UTC),
            claimed_at=claimed_at.astimezone(UTC),
            last_error=error,
        )
        for job_id, buffer_id, account_id, conversation_id, attempts, scheduled_for, error, (
            claimed_at
        ) in rows
    ]
    jobs.sort(key=lambda j: j.scheduled_for)
    return jobs


async def next_wake(
    calls: DriverCalls, clock: datetime | None
) -> tuple[datetime | None, datetime | None, datetime]:
    """``statements.NEXT_WAKE``: the next due time, the next lease expiry, and the clock's now."""
    query, params = _NEXT_WAKE.prepare(calls.dialect, {"p_clock": clock})
    [(due, expiry, now)] = await calls.run(query, params)
    return due, expiry, now


async def load(
    calls: DriverCalls, job: ClaimedJob, owner: str, history_limit: int, *, backfill: bool = False
) -> BufferContents:
    """The rows of ``chatbuffer_load`` (migration 0008), each of one ``part``: the ``check``, a
    ``message`` of the burst (in order), the ``summary``, an ``earlier`` message, a ``reply`` or
    a ``history`` row of the turns after it, the ``backfill`` point, a ``posted``."""
    params = {**sql.held_job(job, owner), "p_history_limit": history_limit, "p_backfill": backfill}
    rows = await calls.run(LOAD, params)
    check: SendCheck = "cancelled"
    burst: list[InboundMessage] = []
    earlier: list[tuple[str | None, Any, datetime]] = []
    replies: list[tuple[str, datetime]] = []
    history: list[contents.HistoryRow] = []
    posted: list[PostedMessage] = []
    summary: ConversationSummary | None = None
    backfill_before: int | None = None
    for (
        part,
        message_id,
        body,
        message_type,
        content_type,
        attachments,
        sender,
        about,
        at,
        kind,
        author,
        turns,
    ) in rows:
        if part == "message":
            burst.append(
                contents.inbound(
                    job.key,
                    message_id,
                    body,
                    message_type,
                    content_type,
                    at.astimezone(UTC),
                    attachments,
                    sender,
                    about,
                )
            )
        elif part == "earlier":
            earlier.append((body, attachments, at.astimezone(UTC)))
        elif part == "reply":
            replies.append((body, at.astimezone(UTC)))
        elif part == "history":
            history.append((message_id, kind, author, body, attachments, at.astimezone(UTC)))
        elif part == "posted":
            # Migration 0014: a posted row's ``turns`` is its part.
            posted.append(PostedMessage(kind, body, message_id, turns or 0))
        elif part == "summary":
            summary = contents.summary(body, at.astimezone(UTC), turns)
        elif part == "backfill":
            backfill_before = message_id
        elif part == "check":
            check = kind
    return BufferContents(
        messages=burst,
        history=contents.turns(earlier, replies, history_limit, history),
        posted=posted,
        check=check,
        summary=summary,
        backfill_before=backfill_before,
    )


async def send_check(calls: DriverCalls, job: ClaimedJob, owner: str) -> SendCheck:
    verdict: SendCheck = (await calls.run(SEND_CHECK, sql.held_job(job, owner)))[0][0]
    return verdict


async def reserve_send(
    calls: DriverCalls,
    job: ClaimedJob,
    owner: str,
    intent: Sequence[PostedMessage],
    now: datetime,
    clock: datetime | None,
    hold: timedelta,
) -> SendCheck:
    """``chatbuffer_reserve_parts`` (migration 0014): the parts are numbered from the first
    one's, in order, and are all of one kind; they are recorded as intents (a part's Chatwoot
    id is recorded by its confirmation)."""
    ordered = sorted(intent, key=lambda p: p.part)
    if len({p.kind for p in ordered}) != 1:
        raise ValueError("a send reservation records the parts of one message")
    if [p.part for p in ordered] != list(range(ordered[0].part, ordered[0].part + len(ordered))):
        raise ValueError("a message's parts are numbered without gaps")
    params = {
        **sql.held_job(job, owner),
        "p_kind": ordered[0].kind,
        "p_parts": [p.content for p in ordered],
        "p_first_part": ordered[0].part,
        "p_clock": clock,
        "p_hold": hold,
        "p_now": now,
    }
    verdict: SendCheck = (await calls.run(RESERVE_SEND, params))[0][0]
    return verdict


async def complete(
    calls: DriverCalls,
    job: ClaimedJob,
    owner: str,
    now: datetime,
    note: str,
    posted: PostedMessage | None,
    assessment: Assessment | None = None,
) -> bool:
    params = {**sql.held_job(job, owner), **_posted(posted), "p_now": now, "p_note": note}
    if assessment is None:
        return bool((await calls.run(COMPLETE, params))[0][0])
    found = sql.assessment(assessment)
    params.update(found, p_actions=Jsonb(found["p_actions"]))
    return bool((await calls.run(COMPLETE_ASSESSED, params))[0][0])


async def release(
    calls: DriverCalls, job: ClaimedJob, owner: str, error: str, retry_at: datetime
) -> bool:
    params = {
        **sql.held_job(job, owner),
        "p_now": job.claimed_at,
        "p_error": error,
        "p_retry_at": retry_at,
    }
    return bool((await calls.run(RELEASE, params))[0][0])


async def fail(calls: DriverCalls, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool:
    params = {**sql.held_job(job, owner), "p_now": now, "p_error": error}
    return bool((await calls.run(FAIL, params))[0][0])


class DriverCalls:
    """The worker's calls, on psycopg connections it keeps between calls.

    Each connection is one SQLAlchemy's pool lent (so it counts against ``DATABASE_POOL_SIZE``
    like any other), kept in autocommit after a call instead of given back: a checkout and a
    check-in through SQLAlchemy cost about 100 µs of the worker's CPU per call (measured on this
    machine: 300 against 200 µs a call), a third of a call's client CPU. At most a quarter of the
    pool is kept (none of a pool under 4), so intake, heartbeats sharing the pool and the other
    statements of the process still find connections; a call that finds none kept borrows one
    and gives it back as before. A kept connection also keeps its plans (the claim's, planned by
    plpgsql once per connection).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        size = getattr(engine.pool, "size", None)
        self._keep = (size() if callable(size) else 0) // 4
        self._kept: list[tuple[Any, psycopg.AsyncConnection[Any]]] = []
        # Disposing the engine closes what the pool holds; what is kept here is closed with it.
        event.listen(engine.sync_engine, "engine_disposed", self._drop_kept)

    @property
    def dialect(self) -> Dialect:
        return self._engine.dialect

    def _drop_kept(self, _engine: Any) -> None:
        kept, self._kept = self._kept, []
        for pooled, _driver in kept:
            pooled.invalidate()

    async def run(self, query: str, params: Mapping[str, Any]) -> list[Any]:
        try:
            return await self._on_driver(query, params)
        except psycopg.Error:
            return await _through_sqlalchemy(self._engine, query, params)

    async def _on_driver(self, query: str, params: Mapping[str, Any]) -> list[Any]:
        if self._kept:
            pooled, driver = self._kept.pop()
        else:
            pooled = await self._engine.raw_connection()
            driver = pooled.driver_connection  # type: ignore[assignment]
            try:
                await driver.set_autocommit(True)
            except BaseException:
                await greenlet_spawn(pooled.invalidate)
                raise
        try:
            cursor = await driver.execute(query, params)
            rows = await cursor.fetchall()
        except BaseException:
            # Never keep or give back a connection in an unknown state.
            await greenlet_spawn(pooled.invalidate)
            raise
        if len(self._kept) < self._keep:
            self._kept.append((pooled, driver))
            return rows
        try:
            await driver.set_autocommit(False)
        except BaseException:
            await greenlet_spawn(pooled.invalidate)
            raise
        # Giving it back may roll back, which SQLAlchemy runs in its greenlet.
        await greenlet_spawn(pooled.close)
        return rows


async def _through_sqlalchemy(
    engine: AsyncEngine, query: str, params: Mapping[str, Any]
) -> list[Any]:
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                result = await autocommit.exec_driver_sql(query, dict(params))
                return [tuple(r) for r in result.all()]
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")
