"""PostgreSQL: a held buffer's transactions as one call each of migration 0007's functions.

Like the intake (``pg_intake``), each call is one statement in autocommit, so one transaction
and one round trip, with no BEGIN, COMMIT or ping, made on the psycopg connection SQLAlchemy's
pool lends: SQLAlchemy's execution layer costs about as much CPU per statement as the database
round trip (see ``statements``). When the driver call fails, the same call is made once more
through SQLAlchemy, whose error handling recognises a connection a database restart broke,
drops the pool's stale connections and reconnects; only then does the error reach the caller.
Making a call twice is safe: a load only reads; a reservation finds its intent recorded and the
lease already kept; a completion, retry or failure finds the job no longer running and reports
the lease lost, which is what the first call left behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from chatbuffer.domain.ports import ClaimedJob, PostedMessage, SendCheck

LOAD = (
    "SELECT part, message_id, body, message_type, content_type, attachments, sender_info,"
    " conversation_info, happened_at, kind FROM chatbuffer_load(%(p_account_id)s,"
    " %(p_conversation_id)s, %(p_job_id)s, %(p_buffer_id)s, %(p_owner)s, %(p_history_limit)s)"
)
RESERVE_SEND = (
    "SELECT chatbuffer_reserve_send(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_clock)s, %(p_hold)s, %(p_kind)s, %(p_content)s,"
    " %(p_message_id)s, %(p_now)s)"
)
COMPLETE = (
    "SELECT chatbuffer_complete(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_note)s, %(p_kind)s, %(p_content)s,"
    " %(p_message_id)s)"
)
RELEASE = (
    "SELECT chatbuffer_release(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_error)s, %(p_retry_at)s)"
)
FAIL = (
    "SELECT chatbuffer_fail(%(p_account_id)s, %(p_conversation_id)s, %(p_job_id)s,"
    " %(p_buffer_id)s, %(p_owner)s, %(p_now)s, %(p_error)s)"
)


def _held(job: ClaimedJob, owner: str) -> dict[str, Any]:
    return {
        "p_account_id": job.key.account_id,
        "p_conversation_id": job.key.conversation_id,
        "p_job_id": job.job_id,
        "p_buffer_id": job.buffer_id,
        "p_owner": owner,
    }


def _posted(posted: PostedMessage | None) -> dict[str, Any]:
    if posted is None:
        return {"p_kind": None, "p_content": None, "p_message_id": None}
    return {
        "p_kind": posted.kind,
        "p_content": posted.content,
        "p_message_id": posted.chatwoot_message_id,
    }


class LoadedRow:
    """One row of ``chatbuffer_load``: ``part`` is ``check``, ``message``, ``earlier``,
    ``reply`` or ``posted``; the other fields are those the part fills in."""

    __slots__ = (
        "attachments",
        "body",
        "content_type",
        "conversation_info",
        "happened_at",
        "kind",
        "message_id",
        "message_type",
        "part",
        "sender_info",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        (
            self.part,
            self.message_id,
            self.body,
            self.message_type,
            self.content_type,
            self.attachments,
            self.sender_info,
            self.conversation_info,
            happened_at,
            self.kind,
        ) = row
        self.happened_at: datetime | None = (
            None if happened_at is None else happened_at.astimezone(UTC)
        )


async def load(
    engine: AsyncEngine, job: ClaimedJob, owner: str, history_limit: int
) -> list[LoadedRow]:
    rows = await _call(engine, LOAD, {**_held(job, owner), "p_history_limit": history_limit})
    return [LoadedRow(r) for r in rows]


async def reserve_send(
    engine: AsyncEngine,
    job: ClaimedJob,
    owner: str,
    intent: PostedMessage,
    now: datetime,
    clock: datetime | None,
    hold: timedelta,
) -> SendCheck:
    params = {
        **_held(job, owner),
        **_posted(intent),
        "p_clock": clock,
        "p_hold": hold,
        "p_now": now,
    }
    verdict: SendCheck = (await _call(engine, RESERVE_SEND, params))[0][0]
    return verdict


async def complete(
    engine: AsyncEngine,
    job: ClaimedJob,
    owner: str,
    now: datetime,
    note: str,
    posted: PostedMessage | None,
) -> bool:
    params = {**_held(job, owner), **_posted(posted), "p_now": now, "p_note": note}
    return bool((await _call(engine, COMPLETE, params))[0][0])


async def release(
    engine: AsyncEngine, job: ClaimedJob, owner: str, error: str, retry_at: datetime
) -> bool:
    params = {
        **_held(job, owner),
        "p_now": job.claimed_at,
        "p_error": error,
        "p_retry_at": retry_at,
    }
    return bool((await _call(engine, RELEASE, params))[0][0])


async def fail(engine: AsyncEngine, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool:
    params = {**_held(job, owner), "p_now": now, "p_error": error}
    return bool((await _call(engine, FAIL, params))[0][0])


async def _call(engine: AsyncEngine, query: str, params: Mapping[str, Any]) -> list[Any]:
    try:
        return await _on_driver(engine, query, params)
    except psycopg.Error:
        return await _through_sqlalchemy(engine, query, params)


async def _on_driver(engine: AsyncEngine, query: str, params: Mapping[str, Any]) -> list[Any]:
    # The pool's own connection, without SQLAlchemy's Connection around it (half the cost of a
    # checkout); giving it back may roll back, which SQLAlchemy runs in its greenlet.
    pooled = await engine.raw_connection()
    try:
        driver: psycopg.AsyncConnection[Any] = pooled.driver_connection  # type: ignore[assignment]
        await driver.set_autocommit(True)
        cursor = await driver.execute(query, params)
        rows = await cursor.fetchall()
        await driver.set_autocommit(False)
    except BaseException:
        # Never hand the pool a connection in an unknown state.
        await greenlet_spawn(pooled.invalidate)
        raise
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
