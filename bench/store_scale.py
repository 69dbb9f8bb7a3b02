"""Do the claim, next-due and intake stay flat with history and backlog?

Builds two PostgreSQL databases at the current schema: an empty one (no history, only the due
jobs the runs claim) and a large one (1,000,000 stored messages in answered buffers with their
replies, and 20,000 due jobs), both generated inside PostgreSQL with ``generate_series``. On each
it measures, side by side:

* ``EXPLAIN ANALYZE`` (planning + execution) of the claim's candidate query (64 jobs), of the
  whole one-statement claim (which also marks the jobs, buffers and conversations), and of the
  next-due query, and of a conversation's history read (its last 20 messages and 20 replies),
  each inside a transaction that is rolled back, with the scans the plan made;
* ``SqlBufferStore.claim_due(limit=64)`` and ``next_wake_at()`` as the worker calls them (wall
  time, round trips included);
* intake: ``record_incoming`` of 4,000 messages (4 per conversation) from 32 tasks, per second;

and at the end how long ``purge --older-than 30d`` takes to delete the large database's history.

Run by hand:

    uv run python bench/store_scale.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The database named in the URL is only used to create (and drop) the scratch databases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Engine, Interval, bindparam, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.util import greenlet_spawn

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.storage import database
from chatbuffer.storage import statements as sql
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.retention import PurgeReport, purge
from lateness import scratch_database

CLAIM_LIMIT = 64
#: Migration 0013's function, as the worker calls it (a session keeps its plan, as the pool's
#: connections do: the runs after the first reuse it).
CLAIM_FUNCTION = text(
    "SELECT * FROM chatbuffer_claim(:p_now, :p_owner, :p_lease, :p_limit, :p_clock)"
).bindparams(bindparam("p_lease", type_=Interval()), bindparam("p_clock", type_=DateTime(True)))
ROUNDS = 2
MESSAGES_PER_BUFFER = 10
BUFFERS_PER_CONVERSATION = 5
INTAKE_TASKS = 32
POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)

# Answered history: buffers of 10 messages, each with its completed job and one reply. Ids are
# md5-derived so the generated rows reference each other without a round trip.
HISTORY = """
INSERT INTO conversations (id, account_id, chatwoot_conversation_id, message_count,
                           conversation_state, created_at, updated_at)
SELECT md5('c' || c)::uuid, 1, c, 1000, 'idle', now(), now()
FROM generate_series(1, :conversations) AS c;

INSERT INTO message_buffer (id, account_id, conversation_id, buffer_start_time, buffer_end_time,
                            last_message_time, status, message_count, conversation_seq,
                            processed_at, outcome, created_at, updated_at)
SELECT md5('b' || b)::uuid, 1, 1 + b % :conversations, t, t, t, 'completed', :per_buffer,
       (b / :conversations) * :per_buffer, t, 'replied', t, t
FROM generate_series(0, :buffers - 1) AS b,
     LATERAL (SELECT now() - interval '90 days' + b * interval '30 seconds' AS t) AS at;

INSERT INTO buffer_processing_jobs (id, buffer_id, account_id, conversation_id, scheduled_for,
                                    status, attempts, created_at, updated_at, processed_at)
SELECT md5('j' || b)::uuid, md5('b' || b)::uuid, 1, 1 + b % :conversations, t, 'completed', 1,
       t, t, t
FROM generate_series(0, :buffers - 1) AS b,
     LATERAL (SELECT now() - interval '90 days' + b * interval '30 seconds' AS t) AS at;

INSERT INTO buffered_messages (id, buffer_id, account_id, conversation_id, chatwoot_message_id,
                               content, message_type, content_type, attachments, sender_info,
                               conversation_info, received_at, processed, created_at)
SELECT md5('m' || m)::uuid, md5('b' || (m / :per_buffer))::uuid, 1,
       1 + (m / :per_buffer) % :conversations, m + 1,
       'Hello, I would like to know whether my order number ' || m || ' has shipped yet.',
       'incoming', 'text', '[]', '{"id": 7, "name": "Ana", "phone_number": "+351900000000"}',
       '{"status": "pending"}', t, true, t
FROM generate_series(0, :messages - 1) AS m,
     LATERAL (SELECT now() - interval '90 days' + m * interval '3 seconds' AS t) AS at;

INSERT INTO bot_replies (id, buffer_id, account_id, conversation_id, kind, content,
                         chatwoot_message_id, sent_at)
SELECT md5('r' || b)::uuid, md5('b' || b)::uuid, 1, 1 + b % :conversations, 'reply',
       'It left our warehouse this morning; you will have it tomorrow.', 1000000000 + b,
       now() - interval '90 days' + b * interval '30 seconds' + interval '40 seconds'
FROM generate_series(0, :buffers - 1) AS b;
"""

# Due work: one closed buffer per conversation (after its history), one message, job due now.
DUE = """
INSERT INTO conversations (id, account_id, chatwoot_conversation_id, message_count,
                           conversation_state, created_at, updated_at)
SELECT md5('c' || c)::uuid, 1, c, 1000, 'idle', now(), now()
FROM generate_series(1, :due) AS c
ON CONFLICT DO NOTHING;

INSERT INTO message_buffer (id, account_id, conversation_id, buffer_start_time, buffer_end_time,
                            last_message_time, status, message_count, conversation_seq,
                            created_at, updated_at)
SELECT md5('d' || d)::uuid, 1, 1 + d, t, t, t, 'closed', 1, 999, t, t
FROM generate_series(0, :due - 1) AS d,
     LATERAL (SELECT now() - interval '1 minute' + d * interval '1 millisecond' AS t) AS at;

INSERT INTO buffer_processing_jobs (id, buffer_id, account_id, conversation_id, scheduled_for,
                                    status, created_at, updated_at)
SELECT md5('e' || d)::uuid, md5('d' || d)::uuid, 1, 1 + d,
       now() - interval '1 minute' + d * interval '1 millisecond', 'scheduled', now(), now()
FROM generate_series(0, :due - 1) AS d;

INSERT INTO buffered_messages (id, buffer_id, account_id, conversation_id, chatwoot_message_id,
                               content, message_type, attachments, sender_info,
                               conversation_info, received_at)
SELECT md5('n' || d)::uuid, md5('d' || d)::uuid, 1, 1 + d, 900000000 + d, 'and one more thing',
       'incoming', '[]', '{"id": 7}', '{}', now() - interval '1 minute'
FROM generate_series(0, :due - 1) AS d;
"""


def fill(engine: Engine, *, messages: int, due: int) -> float:
    """Generate the data set; returns the seconds it took."""
    started = time.perf_counter()
    buffers = messages // MESSAGES_PER_BUFFER
    conversations = max(due, buffers // BUFFERS_PER_CONVERSATION, 1)
    with engine.begin() as conn:
        if buffers:
            for statement in HISTORY.split(";\n"):
                if statement.strip():
                    conn.execute(
                        text(statement),
                        {
                            "conversations": conversations,
                            "buffers": buffers,
                            "per_buffer": MESSAGES_PER_BUFFER,
                            "messages": buffers * MESSAGES_PER_BUFFER,
                        },
                    )
        for statement in DUE.split(";\n"):
            if statement.strip():
                conn.execute(text(statement), {"due": due})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - started


def explain_ms(
    engine: Engine, statement: ClauseElement, params: dict[str, Any]
) -> tuple[float, str]:
    """Planning + execution time of one run, and the plan's top node, rolled back."""
    compiled = statement.compile(dialect=engine.dialect)
    with engine.connect() as conn:
        transaction = conn.begin()
        [(plan,)] = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.construct_params(params)
        ).all()
        transaction.rollback()
    top = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    return top["Planning Time"] + top["Execution Time"], _scans(top["Plan"])


def _scans(node: dict[str, Any]) -> str:
    """The scans of a plan, e.g. ``Index Scan ix_buffer_jobs_due``, to show what it reads."""
    found = []
    if "Scan" in node["Node Type"]:
        found.append(f"{node['Node Type']} {node.get('Index Name', node.get('Relation Name', ''))}")
    for child in node.get("Plans", []):
        found.append(_scans(child))
    return ", ".join(dict.fromkeys(s for s in found if s))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def store_timings(url: str, runs: int, round_no: int) -> dict[str, float]:
    engine = database.create_engine(url, pool_size=INTAKE_TASKS)
    store = SqlBufferStore(engine)
    try:
        now = datetime.now(UTC)
        wake: list[float] = []
        claim: list[float] = []
        statement: list[float] = []
        await store.next_wake_at(now)  # warm up: connections, prepared plans
        await store.claim_due(now, "bench", timedelta(minutes=5), CLAIM_LIMIT)
        await claim_statement(engine, now)
        for _ in range(runs):
            started = time.perf_counter()
            await store.next_wake_at(now)
            wake.append(time.perf_counter() - started)
            started = time.perf_counter()
            claimed = await store.claim_due(now, "bench", timedelta(minutes=5), CLAIM_LIMIT)
            claim.append(time.perf_counter() - started)
            assert len(claimed) == CLAIM_LIMIT, f"claimed {len(claimed)}"
            # The same claim as the worker made it before migration 0013: the statement itself.
            started = time.perf_counter()
            taken = await claim_statement(engine, now)
            statement.append(time.perf_counter() - started)
            assert taken == CLAIM_LIMIT, f"claimed {taken}"
        stored = await intake(store, first_conversation=10_000_000 * round_no)
    finally:
        await engine.dispose()
    return {
        "claim": median_ms(claim),
        "claim_statement": median_ms(statement),
        "wake": median_ms(wake),
        "intake": stored,
    }


async def claim_statement(engine: AsyncEngine, now: datetime) -> int:
    """``statements.CLAIM`` sent as it is, on the worker's path (too long to be prepared)."""
    compiled = sql.CLAIM.compile(dialect=engine.dialect)
    params = compiled.construct_params(
        {
            "p_now": now,
            "p_owner": "bench",
            "p_lease": timedelta(minutes=5),
            "p_limit": CLAIM_LIMIT,
            "p_clock": None,
        }
    )
    # As the worker called it then: a connection borrowed from the pool for the call.
    pooled = await engine.raw_connection()
    try:
        driver: Any = pooled.driver_connection
        await driver.set_autocommit(True)
        rows = await (await driver.execute(str(compiled), params)).fetchall()
        await driver.set_autocommit(False)
    finally:
        await greenlet_spawn(pooled.close)
    return len(rows)


async def intake(store: SqlBufferStore, first_conversation: int, messages: int = 4000) -> float:
    """Messages per second stored by ``record_incoming``, 4 messages per new conversation."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(messages):
        queue.put_nowait(n)

    async def deliver() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            key = ConversationKey(1, first_conversation + n // 4)
            message = InboundMessage(
                key=key,
                chatwoot_message_id=first_conversation * 4 + n,
                content="is it there yet?",
                kind="text",
                content_type="text",
                received_at=datetime.now(UTC),
                sender={"id": 7, "name": "Ana"},
                conversation={"id": key.conversation_id, "status": "pending"},
            )
            await store.record_incoming(message, POLICY, datetime.now(UTC))

    started = time.perf_counter()
    await asyncio.gather(*(deliver() for _ in range(INTAKE_TASKS)))
    return messages / (time.perf_counter() - started)


def build(url: str, *, messages: int, due: int) -> float:
    database.migrate(url)
    engine = create_engine(database.sync_url(url))
    try:
        return fill(engine, messages=messages, due=due)
    finally:
        engine.dispose()


def measure(url: str, *, runs: int, round_no: int) -> dict[str, Any]:
    engine = create_engine(database.sync_url(url))
    try:
        now = datetime.now(UTC)
        params = {"p_now": now, "p_clock": None, "p_limit": CLAIM_LIMIT}
        claim = [explain_ms(engine, sql.CLAIM_CANDIDATES, params) for _ in range(runs)]
        taking = {**params, "p_owner": "bench", "p_lease": timedelta(minutes=5)}
        whole = [explain_ms(engine, sql.CLAIM, taking)[0] for _ in range(runs)]
        function = [explain_ms(engine, CLAIM_FUNCTION, taking)[0] for _ in range(runs)]
        wake = [explain_ms(engine, sql.NEXT_DUE, {}) for _ in range(runs)]
        past = {
            "p_account_id": 1,
            "p_conversation_id": 1,
            "p_buffer_id": uuid.uuid4(),
            "p_before": now,
            "p_after": datetime(1970, 1, 1, tzinfo=UTC),  # no summary yet
            "p_limit": 20,
        }
        history = [
            explain_ms(engine, sql.EARLIER_MESSAGES, past)[0]
            + explain_ms(engine, sql.EARLIER_REPLIES, past)[0]
            for _ in range(runs)
        ]
    finally:
        engine.dispose()
    timings = asyncio.run(store_timings(url, runs, round_no))
    return {
        "explain_claim": statistics.median(ms for ms, _ in claim),
        "claim_plan": claim[-1][1],
        "explain_whole_claim": statistics.median(whole),
        "explain_claim_function": statistics.median(function),
        "explain_wake": statistics.median(ms for ms, _ in wake),
        "wake_plan": wake[-1][1],
        "explain_history": statistics.median(history),
        **timings,
    }


async def purge_history(url: str) -> tuple[PurgeReport, float]:
    """Delete the whole answered history (90 to 55 days old) as ``purge --older-than 30d``."""
    engine = database.create_engine(url, pool_size=1)
    try:
        started = time.perf_counter()
        done = await purge(engine, datetime.now(UTC) - timedelta(days=30))
        return done, time.perf_counter() - started
    finally:
        await engine.dispose()


def report(
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]], results: dict[str, Any]
) -> None:
    names = list(results)
    width = max(len(label) for label, _ in rows)
    print(" " * width + "".join(f" | {name:>29}" for name in names))
    for label, show in rows:
        print(f"{label:<{width}}" + "".join(f" | {show(results[n]):>29}" for n in names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=10, help="claims and next-dues measured")
    args = parser.parse_args()
    claimed = CLAIM_LIMIT * (args.runs + 1) * ROUNDS * 2  # the function and the statement
    sizes = {
        "empty": {"messages": 0, "due": claimed},
        f"{args.messages:,} msgs, {args.due:,} due": {
            "messages": args.messages,
            "due": max(args.due, claimed),
        },
    }
    databases = {name: scratch_database(args.database_url) for name in sizes}
    results: dict[str, Any] = {}
    try:
        built = {name: build(databases[name][0], **size) for name, size in sizes.items()}
        # Interleaved rounds, so a noisy neighbour on the machine does not favour one side.
        for round_no in range(1, ROUNDS + 1):
            for name, (url, _) in databases.items():
                result = measure(url, runs=args.runs, round_no=round_no)
                results[f"{name} #{round_no}"] = {**result, "built_s": built[name]}
        largest = databases[list(sizes)[-1]][0]
        purged, purge_s = asyncio.run(purge_history(largest))
    finally:
        for _, drop in databases.values():
            drop()
    print(f"store scale bench, median of {args.runs} runs per round, claim of {CLAIM_LIMIT}")
    report(
        [
            ("data set built in", lambda r: f"{r['built_s']:.1f} s"),
            ("claim candidates, EXPLAIN ANALYZE", lambda r: f"{r['explain_claim']:.2f} ms"),
            ("whole claim (writes too), EXPLAIN", lambda r: f"{r['explain_whole_claim']:.2f} ms"),
            (
                "chatbuffer_claim(64), EXPLAIN",
                lambda r: f"{r['explain_claim_function']:.2f} ms",
            ),
            ("next due, EXPLAIN ANALYZE", lambda r: f"{r['explain_wake']:.2f} ms"),
            ("history (20 + 20), EXPLAIN ANALYZE", lambda r: f"{r['explain_history']:.2f} ms"),
            ("claim_due(64), wall", lambda r: f"{r['claim']:.2f} ms"),
            ("claim statement (before 0013), wall", lambda r: f"{r['claim_statement']:.2f} ms"),
            ("next_wake_at(), wall", lambda r: f"{r['wake']:.2f} ms"),
            ("intake, 32 tasks", lambda r: f"{r['intake']:.0f} msg/s"),
        ],
        results,
    )
    for name, result in results.items():
        print(f"{name}: claim reads {result['claim_plan']}; next due reads {result['wake_plan']}")
    print(
        f"purge --older-than 30d on the large database: {purged.buffers:,} buffers, "
        f"{purged.messages:,} messages, {purged.jobs:,} jobs, {purged.replies:,} replies "
        f"in {purge_s:.1f} s ({purged.messages / purge_s:,.0f} messages/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
