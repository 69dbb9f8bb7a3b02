"""Every statement of the hot path, built once at import with named parameters.

Building a Core statement and its cache key costs about as much as the database round trip it
makes (measured: 394 µs per freshly built SELECT against 197 µs for a prebuilt one on this
machine's PostgreSQL), so the repository executes these prebuilt statements with parameter
dictionaries instead of building statements per call. Parameter names start with ``p_`` because
SQLAlchemy reserves column names for an UPDATE's own SET parameters.

Every statement but the claim and the next-wake queries is keyed by the conversation
(``p_account_id``, ``p_conversation_id``), and every join joins on the conversation key as well as
the id, so each statement stays inside one shard when the tables are distributed by conversation
(``docs/scaling.md``; ``tests/integration/test_distribution.py`` checks it).

On PostgreSQL a held buffer's transactions (load, send check, reservation, completion, retry,
failure) are server-side functions (migration 0007) that take the steps of the statements here,
which SQLite runs as they are.

Statuses are SQL literals, not parameters: the planner can then match the partial indexes
(``WHERE status = 'scheduled'`` and the like) in a prepared statement's generic plan too.

Leases and due times are compared on one clock, :data:`CLOCK`: on PostgreSQL the database's own
(``statement_timestamp()``) unless the caller passes ``p_clock``; on SQLite (one host) the caller's
``p_clock``. A worker whose host clock is skewed therefore cannot see a live lease as expired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatbuffer.domain.model import Assessment
    from chatbuffer.domain.ports import ClaimedJob

from sqlalchemy import (
    Boolean,
    Integer,
    Interval,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    column,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from chatbuffer.storage.tables import (
    JSONType,
    UTCDateTime,
    bot_replies,
    conversation_memory,
    conversations,
    history_messages,
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

#: Buffers a worker may take: still collecting but due, closed and waiting, or held by a worker
#: whose lease ran out.
CLAIMABLE_BUFFER = ("active", "closed", "processing")


def _time(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime())


def _key(table: Any) -> Any:
    return and_(
        table.c.account_id == bindparam("p_account_id"),
        table.c.conversation_id == bindparam("p_conversation_id"),
    )


def same_conversation(table: Any, other: Any) -> Any:
    return and_(
        table.c.account_id == other.c.account_id,
        table.c.conversation_id == other.c.conversation_id,
    )


def status_is(column: Any, status: str) -> Any:
    """``column = 'status'`` with the status as a literal (see the module's docstring)."""
    return column == literal_column(f"'{status}'")


def status_in(column: Any, statuses: tuple[str, ...]) -> Any:
    return column.in_([literal_column(f"'{s}'") for s in statuses])


#: A job with its buffer: same conversation, then the buffer's id.
_JOB_BUFFER = jobs.join(
    buffers, and_(same_conversation(buffers, jobs), buffers.c.id == jobs.c.buffer_id)
)


class _Clock(FunctionElement[Any]):
    """The instant leases and due times are compared at (see the module docstring)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "chatbuffer_clock"


class _LeaseEnd(FunctionElement[Any]):
    """``CLOCK`` plus ``p_lease``: when a lease taken or renewed now runs out."""

    type = UTCDateTime()
    inherit_cache = True
    name = "chatbuffer_lease_end"


def _caller_clock(compiler: SQLCompiler, name: str, **kw: Any) -> str:
    return compiler.process(bindparam(name, type_=UTCDateTime()), **kw)


@compiles(_Clock)
def _clock_sqlite(_element: _Clock, compiler: SQLCompiler, **kw: Any) -> str:
    return _caller_clock(compiler, "p_clock", **kw)


@compiles(_Clock, "postgresql")
def _clock_postgres(_element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    # statement_timestamp() is stable within a statement, so an index can still serve it.
    return f"coalesce({_caller_clock(compiler, 'p_clock', **kw)}, statement_timestamp())"


@compiles(_LeaseEnd)
def _lease_end_sqlite(_element: _LeaseEnd, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps timestamps as text, so the sum is made by the caller (``p_lease_end``).
    return _caller_clock(compiler, "p_lease_end", **kw)


@compiles(_LeaseEnd, "postgresql")
def _lease_end_postgres(_element: _LeaseEnd, compiler: SQLCompiler, **kw: Any) -> str:
    lease = compiler.process(bindparam("p_lease", type_=Interval()), **kw)
    return f"({_clock_postgres(_element, compiler, **kw)} + {lease})"


#: Now, on the clock leases and due times are compared on.
CLOCK: Any = _Clock()
#: Now plus ``p_lease`` on the same clock.
LEASE_END: Any = _LeaseEnd()

CONVERSATION = and_(
    conversations.c.account_id == bindparam("p_account_id"),
    conversations.c.chatwoot_conversation_id == bindparam("p_conversation_id"),
)

# -- intake -----------------------------------------------------------------------------------

LOCK_CONVERSATION = (
    select(conversations.c.id, conversations.c.human_active_until, conversations.c.message_count)
    .where(CONVERSATION)
    .with_for_update()
)
INSERT_CONVERSATION = insert(conversations)
INSERT_CONVERSATION_PG = pg_insert(conversations).on_conflict_do_nothing()

#: The whole intake transaction, one round trip (migration 0006), run in autocommit.
INTAKE = (
    text(
        "SELECT outcome, human_active_until, buffer_id, opened, message_count, due_at, closed"
        " FROM chatbuffer_intake(:p_account_id, :p_conversation_id, :p_message_id, :p_content,"
        " :p_message_type, :p_content_type, :p_attachments, :p_sender_info,"
        " :p_conversation_info, :p_now, :p_quiet, :p_max_age, :p_max_size)"
    )
    .bindparams(
        bindparam("p_attachments", type_=JSONB),
        bindparam("p_sender_info", type_=JSONB),
        bindparam("p_conversation_info", type_=JSONB),
        bindparam("p_now", type_=UTCDateTime()),
        bindparam("p_quiet", type_=Interval()),
        bindparam("p_max_age", type_=Interval()),
    )
    .columns(
        column("outcome", Text),
        column("human_active_until", UTCDateTime()),
        column("buffer_id", Uuid()),
        column("opened", Boolean),
        column("message_count", Integer),
        column("due_at", UTCDateTime()),
        column("closed", Boolean),
    )
)

NOTIFY = select(func.pg_notify(WAKE_CHANNEL, bindparam("p_payload")))


def _iso(instant: Any) -> Any:
    """A timestamp as ISO 8601 text whatever the session's DateStyle (the listener parses it)."""
    return func.to_json(instant).op("#>>")(literal_column("'{}'"))


#: A buffer held back while an older one of its conversation was answered is claimable once that
#: one is finished: wake the workers (only if there is one), with its due time.
WAKE_WAITING = (
    select(func.pg_notify(WAKE_CHANNEL, _iso(func.min(jobs.c.scheduled_for))))
    .where(
        _key(jobs),
        jobs.c.status == "scheduled",
        jobs.c.buffer_id != bindparam("p_buffer_id"),
    )
    .having(func.count() > 0)
)

UPDATE_ATTACHMENTS = (
    update(messages)
    .where(_key(messages), messages.c.chatwoot_message_id == bindparam("p_message_id"))
    .values(attachments=bindparam("p_attachments", type_=JSONType))
)

CANCEL_BUFFERS = (
    update(buffers)
    .where(_key(buffers), status_in(buffers.c.status, CLAIMABLE_BUFFER))
    .values(
        status="cancelled",
        outcome=bindparam("p_reason"),
        processed_at=_time("p_now"),
        updated_at=_time("p_now"),
    )
    .returning(buffers.c.id)
)

CANCEL_JOBS = (
    update(jobs)
    .where(
        _key(jobs),
        jobs.c.buffer_id.in_(bindparam("p_buffer_ids", expanding=True)),
        status_in(jobs.c.status, ("scheduled", "running")),
    )
    .values(
        status="cancelled",
        error_message=bindparam("p_reason"),
        lease_owner=None,
        lease_expires_at=None,
        processed_at=_time("p_now"),
        updated_at=_time("p_now"),
    )
)

PAUSE_BOT = (
    update(conversations)
    .where(CONVERSATION)
    .values(human_active_until=_time("p_until"), updated_at=_time("p_now"))
)

RESUME_BOT = (
    update(conversations)
    .where(CONVERSATION, conversations.c.human_active_until.is_not(None))
    .values(human_active_until=None, updated_at=_time("p_now"))
)

#: A control word: the collecting buffer stops collecting and is due now (``close_now``).
CLOSE_BUFFER_NOW = (
    update(buffers)
    .where(
        _key(buffers),
        buffers.c.id == bindparam("p_buffer_id"),
        status_is(buffers.c.status, "active"),
    )
    .values(
        status="closed",
        buffer_end_time=_time("p_now"),
        outcome=bindparam("p_reason"),
        updated_at=_time("p_now"),
    )
)
DUE_NOW = (
    update(jobs)
    .where(
        _key(jobs),
        jobs.c.buffer_id == bindparam("p_buffer_id"),
        status_is(jobs.c.status, "scheduled"),
    )
    .values(scheduled_for=_time("p_now"), updated_at=_time("p_now"))
)
CONVERSATION_IDLE = (
    update(conversations)
    .where(CONVERSATION)
    .values(conversation_state="idle", active_buffer_id=None, updated_at=_time("p_now"))
)

# -- worker -----------------------------------------------------------------------------------

_earlier = buffers.alias("earlier")

#: A conversation's buffers are answered in order: one waits while an older one of the same
#: conversation is still unanswered (being processed, or waiting for a retry). When the older one
#: is done it folds into the waiting one (see ``NEWER_BUFFER``), so the whole burst gets one reply.
_WAITS_FOR_EARLIER = (
    select(_earlier.c.id)
    .where(
        same_conversation(_earlier, buffers),
        status_in(_earlier.c.status, ("closed", "processing")),
        _earlier.c.conversation_seq < buffers.c.conversation_seq,
    )
    .exists()
)


def _claimable(due: Any, order: Any) -> Any:
    """Due jobs in ``order``, read from one partial index in order and stopped at the limit."""
    return (
        select(jobs.c.id, jobs.c.buffer_id, jobs.c.account_id, jobs.c.conversation_id)
        .select_from(_JOB_BUFFER)
        .where(due, status_in(buffers.c.status, CLAIMABLE_BUFFER), ~_WAITS_FOR_EARLIER)
        .order_by(order)
        .limit(bindparam("p_limit"))
        # Never wait for a lock: a row locked by intake or another worker is someone else's now.
        .with_for_update(skip_locked=True, of=[jobs, buffers])
    )


# Two ordered scans instead of one OR: each walks its own partial index (ix_buffer_jobs_lease,
# ix_buffer_jobs_due) and stops after p_limit rows, however many jobs are due or stored.
_EXPIRED = _claimable(
    and_(status_is(jobs.c.status, "running"), jobs.c.lease_expires_at < CLOCK),
    jobs.c.lease_expires_at,
).cte("expired")
_SCHEDULED = _claimable(
    and_(status_is(jobs.c.status, "scheduled"), jobs.c.scheduled_for <= CLOCK),
    jobs.c.scheduled_for,
).cte("scheduled")

CLAIM_CANDIDATES = union_all(select(_EXPIRED), select(_SCHEDULED)).limit(bindparam("p_limit"))

_TAKE_JOB: dict[str, Any] = {
    "status": "running",
    "lease_owner": bindparam("p_owner"),
    "lease_expires_at": LEASE_END,
    "attempts": jobs.c.attempts + 1,
    "updated_at": _time("p_now"),
}
_TAKEN_JOB = (
    jobs.c.id,
    jobs.c.buffer_id,
    jobs.c.account_id,
    jobs.c.conversation_id,
    jobs.c.attempts,
    jobs.c.scheduled_for,
    jobs.c.error_message,
    # On the clock the due time was compared on, so lateness is never negative.
    CLOCK.label("claimed_at"),
)

CLAIM_JOBS = (
    update(jobs)
    .where(
        tuple_(jobs.c.account_id, jobs.c.conversation_id, jobs.c.id).in_(
            bindparam("p_jobs", expanding=True)
        )
    )
    .values(_TAKE_JOB)
    .returning(*_TAKEN_JOB)
)

CLAIM_BUFFERS = (
    update(buffers)
    .where(
        tuple_(buffers.c.account_id, buffers.c.conversation_id, buffers.c.id).in_(
            bindparam("p_buffers", expanding=True)
        )
    )
    .values(status="processing", updated_at=_time("p_now"))
)

_CONVERSATION_KEY = tuple_(conversations.c.account_id, conversations.c.chatwoot_conversation_id)

# The conversations' state is informational, so a conversation row that intake holds right now
# is skipped rather than waited for (waiting here could deadlock with intake).
_CLAIMED_CONVERSATIONS = (
    select(conversations.c.account_id, conversations.c.chatwoot_conversation_id)
    .where(_CONVERSATION_KEY.in_(bindparam("p_keys", expanding=True)))
    .with_for_update(skip_locked=True)
)

MARK_PROCESSING = (
    update(conversations)
    .where(_CONVERSATION_KEY.in_(_CLAIMED_CONVERSATIONS))
    .values(conversation_state="processing", updated_at=_time("p_now"))
)

# PostgreSQL: the whole claim above in one statement and one round trip, each update joined to
# the picked rows on the full key (lists of keys as parameters cost more to plan than to run).
_PICKED = CLAIM_CANDIDATES.cte("picked")
_CLAIMED = (
    update(jobs)
    .where(same_conversation(jobs, _PICKED), jobs.c.id == _PICKED.c.id)
    .values(_TAKE_JOB)
    .returning(*_TAKEN_JOB)
    .cte("claimed")
)
_PROCESSING = (
    update(buffers)
    .where(same_conversation(buffers, _CLAIMED), buffers.c.id == _CLAIMED.c.buffer_id)
    .values(status="processing", updated_at=_time("p_now"))
    .cte("processing")
)
_locked = conversations.alias("locked")
_MARKED = (
    update(conversations)
    .where(
        _CONVERSATION_KEY.in_(
            select(_locked.c.account_id, _locked.c.chatwoot_conversation_id)
            .where(
                _locked.c.account_id == _CLAIMED.c.account_id,
                _locked.c.chatwoot_conversation_id == _CLAIMED.c.conversation_id,
            )
            .with_for_update(skip_locked=True, of=_locked)
        )
    )
    .values(conversation_state="processing", updated_at=_time("p_now"))
    .cte("marked")
)
CLAIM = select(_CLAIMED).add_cte(_PROCESSING, _MARKED)

#: The earliest due time of a job that is not waiting for an earlier buffer: the first row of the
#: ordered partial index (an aggregate over a join would read every scheduled job).
NEXT_DUE = (
    select(jobs.c.scheduled_for)
    .select_from(_JOB_BUFFER)
    .where(status_is(jobs.c.status, "scheduled"), ~_WAITS_FOR_EARLIER)
    .order_by(jobs.c.scheduled_for)
    .limit(literal_column("1"))
)
NEXT_LEASE_EXPIRY = select(func.min(jobs.c.lease_expires_at)).where(
    status_is(jobs.c.status, "running")
)

#: Both wake-up instants and the clock they are on, in one round trip: the worker sleeps for the
#: difference, so its own clock's offset does not matter.
NEXT_WAKE = select(
    NEXT_DUE.scalar_subquery().label("next_due"),
    NEXT_LEASE_EXPIRY.scalar_subquery().label("next_expiry"),
    CLOCK.label("now"),
)

HELD = and_(
    _key(jobs),
    jobs.c.id == bindparam("p_job_id"),
    status_is(jobs.c.status, "running"),
    jobs.c.lease_owner == bindparam("p_owner"),
)

#: Renewing never shortens a lease (a reserved send may hold it longer than a heartbeat would).
_RENEWED = case((jobs.c.lease_expires_at > LEASE_END, jobs.c.lease_expires_at), else_=LEASE_END)

#: Before a POST: keep the lease for at least ``p_lease`` more, or learn it is lost.
HOLD_LEASE = update(jobs).where(HELD).values(lease_expires_at=_RENEWED).returning(jobs.c.id)

#: One worker's heartbeat for every job it holds; returns those it still holds.
HEARTBEAT = (
    update(jobs)
    .where(
        tuple_(jobs.c.account_id, jobs.c.conversation_id, jobs.c.id).in_(
            bindparam("p_jobs", expanding=True)
        ),
        jobs.c.status == "running",
        jobs.c.lease_owner == bindparam("p_owner"),
    )
    .values(lease_expires_at=_RENEWED)
    .returning(jobs.c.id)
)

_THIS_BUFFER_SEQ = (
    select(buffers.c.conversation_seq)
    .where(_key(buffers), buffers.c.id == bindparam("p_buffer_id"))
    .scalar_subquery()
)

#: Buffers of the same conversation opened after this one and not yet taken by a worker.
_NEWER_OPEN = and_(
    _key(buffers),
    status_in(buffers.c.status, ("active", "closed")),
    buffers.c.conversation_seq > _THIS_BUFFER_SEQ,
)

#: Before posting: is the job still ours, and has the contact written since?
BEFORE_SEND = (
    select(jobs.c.id, select(buffers.c.id).where(_NEWER_OPEN).exists().label("newer"))
    .select_from(_JOB_BUFFER)
    .where(HELD, status_is(buffers.c.status, "processing"))
)

#: What supersede needs to know about the buffer whose reply went stale: why it closed (derived
#: from its times, see ``domain.buffer.closed_by_quiet``) and how old it is now.
STALE_BUFFER = select(
    buffers.c.buffer_start_time,
    buffers.c.last_message_time,
    buffers.c.buffer_end_time,
    buffers.c.message_count,
    CLOCK.label("now"),
).where(_key(buffers), buffers.c.id == bindparam("p_buffer_id"))

NEWER_BUFFER = (
    select(
        buffers.c.id,
        buffers.c.status,
        buffers.c.buffer_start_time,
        buffers.c.last_message_time,
        buffers.c.message_count,
    )
    .where(_NEWER_OPEN)
    .order_by(buffers.c.conversation_seq)
    .limit(1)
    .with_for_update()
)

MOVE_MESSAGES = (
    update(messages)
    .where(_key(messages), messages.c.buffer_id == bindparam("p_buffer_id"))
    .values(buffer_id=bindparam("p_into"))
)

#: The newer buffer takes the stale one's messages and its age: it is due no later than the
#: oldest message it now holds allows (``MAX_BUFFER_AGE_MS``).
GROW_BUFFER = (
    update(buffers)
    .where(_key(buffers), buffers.c.id == bindparam("p_into"))
    .values(
        message_count=buffers.c.message_count + bindparam("p_moved"),
        buffer_start_time=_time("p_start"),
        buffer_end_time=_time("p_due"),
        status=bindparam("p_status"),
        updated_at=_time("p_now"),
    )
)

#: Its job is due when the grown buffer is (never later than before: it is as old as the oldest).
GROWN_JOB = (
    update(jobs)
    .where(
        _key(jobs), jobs.c.buffer_id == bindparam("p_into"), status_is(jobs.c.status, "scheduled")
    )
    .values(scheduled_for=_time("p_due"), updated_at=_time("p_now"))
)


BUFFER_MESSAGES = (
    select(messages)
    .where(_key(messages), messages.c.buffer_id == bindparam("p_buffer_id"))
    .order_by(messages.c.chatwoot_message_id)
)

#: The conversation's rolling summary, and whether its earlier history was fetched from Chatwoot.
MEMORY = select(
    conversation_memory.c.summary,
    conversation_memory.c.summary_through,
    conversation_memory.c.summary_turns,
    conversation_memory.c.backfilled_at,
).where(_key(conversation_memory))

# History: what came before the burst (``p_before``) and after the summary (``p_after``), the
# newest ``p_limit`` of each kind of turn; the caller interleaves and trims.

EARLIER_MESSAGES = (
    select(messages.c.content, messages.c.attachments, messages.c.received_at)
    .where(
        _key(messages),
        messages.c.buffer_id != bindparam("p_buffer_id"),
        messages.c.received_at < _time("p_before"),
        messages.c.received_at > _time("p_after"),
    )
    .order_by(messages.c.received_at.desc())
    .limit(bindparam("p_limit"))
)

EARLIER_REPLIES = (
    select(bot_replies.c.content, bot_replies.c.sent_at)
    .where(
        _key(bot_replies),
        status_is(bot_replies.c.kind, "reply"),
        # An intent Chatwoot never confirmed may not have reached the contact.
        bot_replies.c.chatwoot_message_id.is_not(None),
        bot_replies.c.sent_at < _time("p_before"),
        bot_replies.c.sent_at > _time("p_after"),
    )
    .order_by(bot_replies.c.sent_at.desc())
    .limit(bindparam("p_limit"))
)

#: Human agents' messages and the history fetched from Chatwoot.
EARLIER_HISTORY = (
    select(
        history_messages.c.chatwoot_message_id,
        history_messages.c.role,
        history_messages.c.author,
        history_messages.c.content,
        history_messages.c.attachments,
        history_messages.c.happened_at,
    )
    .where(
        _key(history_messages),
        history_messages.c.happened_at < _time("p_before"),
        history_messages.c.happened_at > _time("p_after"),
    )
    .order_by(history_messages.c.happened_at.desc())
    .limit(bindparam("p_limit"))
)


def _first_id(table: Any) -> Any:
    return select(func.min(table.c.chatwoot_message_id)).where(_key(table)).scalar_subquery()


#: The oldest Chatwoot message id stored of the conversation, by kind (a conversation never
#: fetched from Chatwoot is fetched before it).
FIRST_STORED = select(
    _first_id(messages).label("message"),
    _first_id(history_messages).label("history"),
    _first_id(bot_replies).label("reply"),
)

#: A turn kept by its Chatwoot id: one already kept (a redelivered webhook, a second fetch)
#: stays as it is.
RECORD_HISTORY_SQLITE = sqlite_insert(history_messages).on_conflict_do_nothing(
    index_elements=["account_id", "conversation_id", "chatwoot_message_id"]
)
RECORD_HISTORY_PG = pg_insert(history_messages).on_conflict_do_nothing(
    index_elements=["account_id", "conversation_id", "chatwoot_message_id"]
)


def _remember(insert_: Any) -> tuple[Any, Any]:
    """(mark the history fetched, save a summary) as upserts of the conversation's memory row."""
    memory = conversation_memory.c
    new = insert_.excluded
    backfilled = insert_.on_conflict_do_update(
        index_elements=["account_id", "conversation_id"],
        set_={
            "backfilled_at": func.coalesce(memory.backfilled_at, new.backfilled_at),
            "updated_at": new.updated_at,
        },
    )
    summary = insert_.on_conflict_do_update(
        index_elements=["account_id", "conversation_id"],
        set_={
            "summary": new.summary,
            "summary_through": new.summary_through,
            "summary_turns": new.summary_turns,
            "summarized_at": new.summarized_at,
            "updated_at": new.updated_at,
        },
        # Two refreshes at once: the one that reaches further wins, whichever commits last.
        where=or_(memory.summary_through.is_(None), memory.summary_through < new.summary_through),
    ).returning(memory.account_id)
    return backfilled, summary


MARK_BACKFILLED_SQLITE, SAVE_SUMMARY_SQLITE = _remember(sqlite_insert(conversation_memory))
MARK_BACKFILLED_PG, SAVE_SUMMARY_PG = _remember(pg_insert(conversation_memory))

#: What earlier attempts meant to post, or posted, for this buffer.
BUFFER_POSTED = (
    select(
        bot_replies.c.kind,
        bot_replies.c.content,
        bot_replies.c.chatwoot_message_id,
        bot_replies.c.part,
    )
    .where(_key(bot_replies), bot_replies.c.buffer_id == bindparam("p_buffer_id"))
    .order_by(bot_replies.c.sent_at, bot_replies.c.part)
)

#: SQLite (PostgreSQL records replies in migration 0014's functions): a part of a kind the
#: buffer already has is not recorded again (the first intent is kept).
RECORD_REPLY = sqlite_insert(bot_replies).on_conflict_do_nothing(
    index_elements=["account_id", "conversation_id", "buffer_id", "kind", "part"]
)

#: Only fills a missing id: the first confirmation wins, a late echo changes nothing.
CONFIRM_SENT = (
    update(bot_replies)
    .where(
        _key(bot_replies),
        bot_replies.c.buffer_id == bindparam("p_buffer_id"),
        bot_replies.c.kind == bindparam("p_kind"),
        bot_replies.c.part == bindparam("p_part"),
        bot_replies.c.chatwoot_message_id.is_(None),
    )
    .values(chatwoot_message_id=bindparam("p_message_id"))
)

#: What the model said of a burst, and its urgency, kept with the buffer.
RECORD_ASSESSMENT = (
    update(buffers)
    .where(_key(buffers), buffers.c.id == bindparam("p_buffer_id"))
    .values(
        urgency=bindparam("p_urgency"),
        model_intent=bindparam("p_intent"),
        model_actions=bindparam("p_actions", type_=buffers.c.model_actions.type),
        model_confidence=bindparam("p_confidence"),
        model_should_respond=bindparam("p_should_respond"),
    )
)


def finish_job(status: str) -> Any:
    """Release a held job as ``completed``, ``failed`` or back to ``scheduled``."""
    values: dict[str, Any] = {
        "status": status,
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": _time("p_now"),
    }
    if status == "scheduled":
        values.update(scheduled_for=_time("p_retry_at"), error_message=bindparam("p_error"))
    else:
        values["processed_at"] = _time("p_now")
        if status == "failed":
            values["error_message"] = bindparam("p_error")
    return update(jobs).where(HELD).values(**values)


def finish_buffer(status: str) -> Any:
    """Move a ``processing`` buffer to ``completed``, ``failed`` or back to ``closed``."""
    values: dict[str, Any] = {"status": status, "updated_at": _time("p_now")}
    if status != "closed":
        values.update(outcome=bindparam("p_note"), processed_at=_time("p_now"))
    return (
        update(buffers)
        .where(
            _key(buffers),
            buffers.c.id == bindparam("p_buffer_id"),
            status_is(buffers.c.status, "processing"),
        )
        .values(**values)
    )


COMPLETE_JOB = finish_job("completed")
RETRY_JOB = finish_job("scheduled")
FAIL_JOB = finish_job("failed")
COMPLETE_BUFFER = finish_buffer("completed")
SUPERSEDE_BUFFER = finish_buffer("superseded")
RETRY_BUFFER = finish_buffer("closed")
FAIL_BUFFER = finish_buffer("failed")

MARK_MESSAGES_PROCESSED = (
    update(messages)
    .where(_key(messages), messages.c.buffer_id == bindparam("p_buffer_id"))
    .values(processed=True)
)

IDLE_IF_PROCESSING = (
    update(conversations)
    .where(CONVERSATION, status_is(conversations.c.conversation_state, "processing"))
    .values(conversation_state="idle", updated_at=_time("p_now"))
)


# -- admin (operators only; not on the hot path) -----------------------------------------------

_SUMMARY = (
    select(
        buffers.c.id,
        buffers.c.account_id,
        buffers.c.conversation_id,
        buffers.c.status,
        buffers.c.message_count,
        buffers.c.outcome,
        buffers.c.updated_at,
        jobs.c.attempts,
        jobs.c.error_message,
        jobs.c.scheduled_for,
    )
    .select_from(
        buffers.join(jobs, and_(same_conversation(jobs, buffers), jobs.c.buffer_id == buffers.c.id))
    )
    .order_by(buffers.c.updated_at.desc())
    .limit(bindparam("p_limit"))
)
LIST_BUFFERS = _SUMMARY.where(buffers.c.status == bindparam("p_status"))
LIST_CONVERSATION_BUFFERS = LIST_BUFFERS.where(_key(buffers))
BUFFER_SUMMARY = _SUMMARY.where(buffers.c.id == bindparam("p_buffer_id"))

#: A conversation's buffers opened after this one, locked so that a claim in flight is waited
#: for: a replay must not answer an old burst after (or while) a newer one is answered.
LATER_BUFFERS = (
    select(buffers.c.status)
    .where(_key(buffers), buffers.c.conversation_seq > _THIS_BUFFER_SEQ)
    .with_for_update()
)

REPLAY_JOB = (
    update(jobs)
    .where(
        _key(jobs), jobs.c.buffer_id == bindparam("p_buffer_id"), status_is(jobs.c.status, "failed")
    )
    .values(
        status="scheduled",
        attempts=0,
        scheduled_for=_time("p_now"),
        lease_owner=None,
        lease_expires_at=None,
        processed_at=None,
        updated_at=_time("p_now"),
    )
)
REPLAY_BUFFER = (
    update(buffers)
    .where(
        _key(buffers),
        buffers.c.id == bindparam("p_buffer_id"),
        status_is(buffers.c.status, "failed"),
    )
    .values(status="closed", outcome=None, processed_at=None, updated_at=_time("p_now"))
)

#: A replay starts a fresh cycle: a hand-over note that never reached Chatwoot is dropped.
DROP_UNSENT_FAILURE_NOTES = delete(bot_replies).where(
    _key(bot_replies),
    bot_replies.c.buffer_id == bindparam("p_buffer_id"),
    status_is(bot_replies.c.kind, "failure_note"),
    bot_replies.c.chatwoot_message_id.is_(None),
)


def assessment(found: Assessment) -> dict[str, Any]:
    """The parameters of ``RECORD_ASSESSMENT`` (and of ``chatbuffer_complete_assessed``)."""
    return {
        "p_urgency": found.urgency,
        "p_intent": found.intent,
        "p_actions": list(found.actions),
        "p_confidence": found.confidence,
        "p_should_respond": found.should_respond,
    }


def held_job(job: ClaimedJob, owner: str) -> dict[str, Any]:
    """The parameters naming a job ``owner`` holds, by its full conversation key."""
    return {
        "p_account_id": job.key.account_id,
        "p_conversation_id": job.key.conversation_id,
        "p_job_id": job.job_id,
        "p_buffer_id": job.buffer_id,
        "p_owner": owner,
    }
