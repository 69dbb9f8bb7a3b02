"""PostgreSQL: the claim, next-due, history and purge reads can use their indexes in any plan.

The statements are prepared and planned with ``plan_cache_mode = force_generic_plan``, the plan a
prepared statement settles on after a few calls, where parameter values are unknown: a partial
index (``WHERE status = 'scheduled'``) is usable only when the statement's status is a literal.
Sequential scans are priced out so the check does not depend on table sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, create_engine, literal_column, select
from sqlalchemy.dialects import postgresql

from chatbuffer.storage import database, retention
from chatbuffer.storage import statements as sql
from chatbuffer.storage.tables import buffer_processing_jobs as jobs

#: SQL for each parameter the statements below take.
ARGUMENTS = {
    "p_now": "now()",
    "p_clock": "NULL",
    "p_before": "now()",
    "p_after": "now() - interval '1 day'",
    "p_cutoff": "now()",
    "p_limit": "64",
    "p_account_id": "1",
    "p_conversation_id": "42",
    "p_buffer_id": "gen_random_uuid()",
    "p_status": "'scheduled'",
}


@pytest.fixture
def conn(postgres_url: str) -> Iterator[Connection]:
    engine = create_engine(database.sync_url(postgres_url))
    with engine.connect() as connection:
        connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        connection.exec_driver_sql("SET enable_seqscan = off")
        yield connection
        connection.rollback()
    engine.dispose()


def generic_plan(conn: Connection, statement: Any) -> str:
    compiled = statement.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    conn.exec_driver_sql("DEALLOCATE ALL")
    conn.exec_driver_sql(f"PREPARE probe AS {compiled}")
    names = compiled.positiontup or []
    arguments = f"({', '.join(ARGUMENTS[n] for n in names)})" if names else ""
    rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE probe{arguments}").scalars().all()
    return "\n".join(rows)


@pytest.mark.parametrize(
    ("statement", "indexes"),
    [
        (sql.CLAIM_CANDIDATES, ["ix_buffer_jobs_due", "ix_buffer_jobs_lease"]),
        (sql.NEXT_DUE, ["ix_buffer_jobs_due"]),
        (sql.NEXT_LEASE_EXPIRY, ["ix_buffer_jobs_lease"]),
        (sql.EARLIER_MESSAGES, ["ix_buffered_messages_history"]),
        (sql.EARLIER_REPLIES, ["ix_bot_replies_history"]),
        (sql.EARLIER_HISTORY, ["ix_history_messages_history"]),
        (retention.FINISHED_BEFORE, ["ix_message_buffer_finished"]),
    ],
    ids=["claim", "next-due", "next-lease-expiry", "history", "replies", "agents", "purge"],
)
def test_the_hot_reads_use_their_indexes_in_a_generic_plan(
    conn: Connection, statement: Any, indexes: list[str]
) -> None:
    plan = generic_plan(conn, statement)
    for index in indexes:
        assert index in plan, plan
    if statement is not retention.FINISHED_BEFORE:  # a batch job: the index is what matters
        assert "Sort" not in plan, plan  # read in index order, stopped at the limit


def test_a_status_given_as_a_parameter_keeps_the_partial_index_out_of_reach(
    conn: Connection,
) -> None:
    bound = (
        select(jobs.c.scheduled_for)
        .where(jobs.c.status == bindparam("p_status"))
        .order_by(jobs.c.scheduled_for)
        .limit(literal_column("1"))
    )
    assert "ix_buffer_jobs_due" not in generic_plan(conn, bound)
    assert "ix_buffer_jobs_due" in generic_plan(conn, sql.NEXT_DUE)
