"""Retention: delete finished buffers, with their messages, jobs and replies, once old enough.

Message text, sender data and the bot's replies are personal data; ``DATA_RETENTION_DAYS`` and
``chatbuffer purge`` bound how long they are kept. Only finished buffers (``completed``,
``superseded``, ``cancelled``, ``failed``) whose last change is older than the cutoff go; an
``active``, ``closed`` or ``processing`` buffer is never touched. Conversation rows stay (they
hold ids, the message count that orders buffers, and a human takeover pause; no text).

The rest of a conversation's history goes by its own age: human agents' messages and messages
fetched from Chatwoot (``history_messages``) said before the cutoff, and summaries made before it
(the text is cleared; the note that the history was fetched stays, so it is not fetched again).

Each batch is one transaction: pick up to ``batch_size`` old finished buffers (on PostgreSQL
``FOR UPDATE SKIP LOCKED``, so a replay or a second purge is never waited for), delete what they
own by the full conversation key, then the buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    Integer,
    Uuid,
    and_,
    bindparam,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatbuffer.domain.ports import Clock
from chatbuffer.storage import database
from chatbuffer.storage.statements import same_conversation, status_in
from chatbuffer.storage.tables import (
    FINISHED_BUFFER,
    UTCDateTime,
    bot_replies,
    conversation_memory,
    conversations,
    history_messages,
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

#: One batch, oldest first (the partial index ix_message_buffer_finished). It locks, skipping
#: what others hold, every row the batch will write but messages and replies: the conversation
#: (which it may update), the job and the buffer. Whoever holds one of those (a replay locks the
#: conversation, then the job, then the buffer) is never waited for, so the purge cannot close a
#: lock cycle; it only ever waits for a message or reply row, whose writers wait for nothing it
#: holds.
FINISHED_BEFORE = (
    select(buffers.c.account_id, buffers.c.conversation_id, buffers.c.id)
    .select_from(
        buffers.join(
            jobs, same_conversation(jobs, buffers) & (jobs.c.buffer_id == buffers.c.id)
        ).join(
            conversations,
            (conversations.c.account_id == buffers.c.account_id)
            & (conversations.c.chatwoot_conversation_id == buffers.c.conversation_id),
        )
    )
    .where(*_OLD_FINISHED)
    .order_by(buffers.c.updated_at)
    .limit(bindparam("p_limit"))
    .with_for_update(skip_locked=True, of=[buffers, jobs, conversations])
)


class _Deletes(NamedTuple):
    """One batch's statements: delete what the picked buffers own, then the buffers."""

    messages: Any
    jobs: Any
    replies: Any
    forget: Any
    buffers: Any


def _deletes(owned_by: Callable[[Any, Any, Any], Any]) -> _Deletes:
    """``owned_by(table, its conversation column, its buffer column)``: the picked buffers' rows."""
    c = conversations.c
    return _Deletes(
        messages=delete(messages).where(
            owned_by(messages, messages.c.conversation_id, messages.c.buffer_id)
        ),
        jobs=delete(jobs).where(owned_by(jobs, jobs.c.conversation_id, jobs.c.buffer_id)),
        replies=delete(bot_replies).where(
            owned_by(bot_replies, bot_replies.c.conversation_id, bot_replies.c.buffer_id)
        ),
        # A conversation may still name its last, long finished buffer as its active one.
        forget=update(conversations)
        .where(owned_by(conversations, c.chatwoot_conversation_id, c.active_buffer_id))
        .values(active_buffer_id=None),
        buffers=delete(buffers).where(owned_by(buffers, buffers.c.conversation_id, buffers.c.id)),
    )


def _in_key_list(table: Any, conversation: Any, buffer_id: Any) -> Any:
    return tuple_(table.c.account_id, conversation, buffer_id).in_(
        bindparam("p_buffers", expanding=True)
    )


#: PostgreSQL: the batch's keys as three arrays, joined on the full key (a list of 1,000 row
#: values costs far more to plan than the deletes cost to run).
_PICKED = (
    func.unnest(
        bindparam("p_accounts", type_=ARRAY(Integer)),
        bindparam("p_conversations", type_=ARRAY(Integer)),
        bindparam("p_ids", type_=ARRAY(Uuid)),
    )
    .table_valued("account_id", "conversation_id", "id")
    .render_derived(name="picked")
)


def _joined_to_picked(table: Any, conversation: Any, buffer_id: Any) -> Any:
    return and_(
        table.c.account_id == _PICKED.c.account_id,
        conversation == _PICKED.c.conversation_id,
        buffer_id == _PICKED.c.id,
    )


_PORTABLE = _deletes(_in_key_list)
_POSTGRES = _deletes(_joined_to_picked)

DELETE_MESSAGES, DELETE_JOBS, DELETE_REPLIES, FORGET_BUFFERS, DELETE_BUFFERS = _PORTABLE
(
    PG_DELETE_MESSAGES,
    PG_DELETE_JOBS,
    PG_DELETE_REPLIES,
    PG_FORGET_BUFFERS,
    PG_DELETE_BUFFERS,
) = _POSTGRES


def _count_owned(table: Any) -> Any:
    owner = table.join(
        buffers, same_conversation(table, buffers) & (buffers.c.id == table.c.buffer_id)
    )
    return select(func.count()).select_from(owner).where(*_OLD_FINISHED)


COUNT_BUFFERS = select(func.count()).select_from(buffers).where(*_OLD_FINISHED)
COUNT_MESSAGES = _count_owned(messages)
COUNT_JOBS = _count_owned(jobs)
COUNT_REPLIES = _count_owned(bot_replies)


_CUTOFF = bindparam("p_cutoff", type_=UTCDateTime())
_h = history_messages.c
_m = conversation_memory.c

#: One batch of agents' and fetched messages said before the cutoff, oldest first.
DELETE_OLD_HISTORY = delete(history_messages).where(
    tuple_(_h.account_id, _h.conversation_id, _h.chatwoot_message_id).in_(
        select(_h.account_id, _h.conversation_id, _h.chatwoot_message_id)
        .where(_h.happened_at < _CUTOFF)
        .order_by(_h.happened_at)
        .limit(bindparam("p_limit"))
    )
)
#: One batch of summaries made before the cutoff: their text goes, the row stays.
FORGET_OLD_SUMMARIES = (
    update(conversation_memory)
    .where(
        tuple_(_m.account_id, _m.conversation_id).in_(
            select(_m.account_id, _m.conversation_id)
            .where(_m.summarized_at < _CUTOFF, _m.summary.is_not(None))
            .limit(bindparam("p_limit"))
        )
    )
    .values(summary=None, summary_through=None, summary_turns=0, summarized_at=None)
)
COUNT_HISTORY = select(func.count()).where(_h.happened_at < _CUTOFF)
COUNT_SUMMARIES = select(func.count()).where(_m.summarized_at < _CUTOFF, _m.summary.is_not(None))


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge deleted, or with ``dry_run`` would delete."""

    buffers: int = 0
    messages: int = 0
    jobs: int = 0
    replies: int = 0
    dry_run: bool = False
    #: Human agents' messages and messages fetched from Chatwoot.
    history: int = 0
    #: Conversation summaries cleared.
    summaries: int = 0

    def __add__(self, other: PurgeReport) -> PurgeReport:
        return PurgeReport(
            buffers=self.buffers + other.buffers,
            messages=self.messages + other.messages,
            jobs=self.jobs + other.jobs,
            replies=self.replies + other.replies,
            dry_run=self.dry_run,
            history=self.history + other.history,
            summaries=self.summaries + other.summaries,
        )


async def purge(
    engine: AsyncEngine,
    cutoff: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> PurgeReport:
    """Delete finished buffers last changed before ``cutoff``, then the agents' and fetched
    messages said and the summaries made before it, ``batch_size`` per transaction."""
    if dry_run:
        return await _count(engine, cutoff)
    total = PurgeReport()
    while True:
        async with engine.begin() as conn:
            batch = await _purge_batch(conn, cutoff, batch_size)
        total += batch
        if batch.buffers < batch_size:
            break
    params = {"p_cutoff": cutoff, "p_limit": batch_size}
    history = await _in_batches(engine, DELETE_OLD_HISTORY, params, batch_size)
    summaries = await _in_batches(engine, FORGET_OLD_SUMMARIES, params, batch_size)
    return total + PurgeReport(history=history, summaries=summaries)


async def _in_batches(
    engine: AsyncEngine, statement: Any, params: dict[str, Any], batch_size: int
) -> int:
    """Run a statement that changes at most ``batch_size`` rows, one transaction each, until
    fewer are left; how many rows it changed in all."""
    changed = 0
    while True:
        async with engine.begin() as conn:
            done = int((await conn.execute(statement, params)).rowcount)
        changed += done
        if done < batch_size:
            return changed


async def _purge_batch(conn: AsyncConnection, cutoff: datetime, batch_size: int) -> PurgeReport:
    picked = (
        await conn.execute(FINISHED_BEFORE, {"p_cutoff": cutoff, "p_limit": batch_size})
    ).all()
    if not picked:
        return PurgeReport()
    keys: dict[str, Any]
    if conn.dialect.name == "postgresql":
        deletes = _POSTGRES
        keys = {
            "p_accounts": [row.account_id for row in picked],
            "p_conversations": [row.conversation_id for row in picked],
            "p_ids": [row.id for row in picked],
        }
    else:
        deletes, keys = _PORTABLE, {"p_buffers": [tuple(row) for row in picked]}
    messages_deleted = (await conn.execute(deletes.messages, keys)).rowcount
    jobs_deleted = (await conn.execute(deletes.jobs, keys)).rowcount
    replies_deleted = (await conn.execute(deletes.replies, keys)).rowcount
    await conn.execute(deletes.forget, keys)
    return PurgeReport(
        buffers=(await conn.execute(deletes.buffers, keys)).rowcount,
        messages=messages_deleted,
        jobs=jobs_deleted,
        replies=replies_deleted,
    )


async def _count(engine: AsyncEngine, cutoff: datetime) -> PurgeReport:
    params = {"p_cutoff": cutoff}
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{database.READ_ONLY: True})
        buffers_, messages_, jobs_, replies_, history_, summaries_ = [
            int(await conn.scalar(statement, params) or 0)
            for statement in (
                COUNT_BUFFERS,
                COUNT_MESSAGES,
                COUNT_JOBS,
                COUNT_REPLIES,
                COUNT_HISTORY,
                COUNT_SUMMARIES,
            )
        ]
    return PurgeReport(
        buffers_,
        messages_,
        jobs_,
        replies_,
        dry_run=True,
        history=history_,
        summaries=summaries_,
    )


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
            if report.buffers or report.history or report.summaries:
                logger.info(
                    "retention purge",
                    extra={
                        "buffers": report.buffers,
                        "messages": report.messages,
                        "jobs": report.jobs,
                        "replies": report.replies,
                        "history": report.history,
                        "summaries": report.summaries,
                    },
                )
        await clock.sleep(interval.total_seconds())
