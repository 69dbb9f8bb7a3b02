"""Replies in parts, and what the model said of each burst.

* ``bot_replies.part``: a reply longer than ``REPLY_MAX_CHARS`` is posted as parts 0, 1, …, each
  a row of its own, recorded before the first POST, marked and confirmed on its own. The unique
  key becomes (account_id, conversation_id, buffer_id, kind, part).
* ``message_buffer``: ``urgency`` (1-10, ``domain.urgency``) and the model's ``model_intent``,
  ``model_actions``, ``model_confidence`` and ``model_should_respond``, set when the buffer it
  answered completes (``chatbuffer_complete_assessed``, in the completion's transaction).

On PostgreSQL ``chatbuffer_record_posted`` takes the part (its old form records part 0, for the
functions that call it), ``chatbuffer_reserve_parts`` records every part of a message in the
reservation's transaction, and ``chatbuffer_load`` (0008's, same arguments and rows) gives a
posted row's part in its ``turns`` column and the parts in order.

A contract migration: the previous release's SQLite statements name the old unique key in their
``ON CONFLICT``, which no longer exists. The downgrade keeps only the first part of each message.

Revision ID: 0014
Revises: 0018
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0018"
branch_labels = None
depends_on = None
oldest_compatible_code = revision

KEY = ["account_id", "conversation_id"]
OLD_UNIQUE = "uq_bot_replies_buffer_kind"
NEW_UNIQUE = "uq_bot_replies_buffer_kind_part"
ASSESSMENT: list[tuple[str, sa.types.TypeEngine[Any]]] = [
    ("urgency", sa.Integer()),
    ("model_intent", sa.Text()),
    ("model_confidence", sa.Float()),
    ("model_should_respond", sa.Boolean()),
]

#: Record an intent, or fill in the id of one, by kind and part; a row that already has an id
#: is kept (``sqlite_worker.record_posted``). The caller holds the conversation's lock.
RECORD_PART = """
CREATE OR REPLACE FUNCTION chatbuffer_record_posted(
    p_account_id integer,
    p_conversation_id integer,
    p_buffer_id uuid,
    p_kind text,
    p_part integer,
    p_content text,
    p_message_id bigint,
    p_now timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF p_message_id IS NOT NULL THEN
        UPDATE bot_replies AS b
           SET chatwoot_message_id = p_message_id
         WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
           AND b.buffer_id = p_buffer_id AND b.kind = p_kind AND b.part = p_part
           AND b.chatwoot_message_id IS NULL;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    INSERT INTO bot_replies (
        id, buffer_id, account_id, conversation_id, kind, part, content, chatwoot_message_id,
        sent_at
    ) VALUES (
        gen_random_uuid(), p_buffer_id, p_account_id, p_conversation_id, p_kind, p_part,
        p_content, p_message_id, p_now
    )
    ON CONFLICT (account_id, conversation_id, buffer_id, kind, part) DO NOTHING;
END;
$fn$
"""

#: 0007's form, as ``chatbuffer_complete`` and ``chatbuffer_reserve_send`` call it: part 0 (a
#: message in one piece, or the first part).
RECORD_FIRST = """
CREATE OR REPLACE FUNCTION chatbuffer_record_posted(
    p_account_id integer,
    p_conversation_id integer,
    p_buffer_id uuid,
    p_kind text,
    p_content text,
    p_message_id bigint,
    p_now timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM chatbuffer_record_posted(
        p_account_id, p_conversation_id, p_buffer_id, p_kind, 0, p_content, p_message_id, p_now);
END;
$fn$
"""

#: 0007's ``chatbuffer_reserve_send`` for a message in parts: ``p_parts`` are the texts of
#: parts ``p_first_part``, ``p_first_part`` + 1, …, all recorded (those already recorded are
#: kept) unless the job is lost.
RESERVE_PARTS = """
CREATE OR REPLACE FUNCTION chatbuffer_reserve_parts(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_clock timestamptz,
    p_hold interval,
    p_kind text,
    p_parts text[],
    p_first_part integer,
    p_now timestamptz
)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_lease_end timestamptz := coalesce(p_clock, statement_timestamp()) + p_hold;
    v_verdict text;
    v_index integer;
BEGIN
    PERFORM chatbuffer_lock_conversation(p_account_id, p_conversation_id);
    -- Keep the lease for the POST (never shorten it), or learn it is lost.
    UPDATE buffer_processing_jobs AS j
       SET lease_expires_at = greatest(j.lease_expires_at, v_lease_end)
     WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
       AND j.id = p_job_id AND j.status = 'running' AND j.lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN 'cancelled';
    END IF;
    v_verdict := chatbuffer_send_check(
        p_account_id, p_conversation_id, p_job_id, p_buffer_id, p_owner);
    IF v_verdict <> 'cancelled' THEN
        FOR v_index IN 1 .. coalesce(array_length(p_parts, 1), 0) LOOP
            PERFORM chatbuffer_record_posted(
                p_account_id, p_conversation_id, p_buffer_id, p_kind,
                p_first_part + v_index - 1, p_parts[v_index], NULL, p_now);
        END LOOP;
    END IF;
    RETURN v_verdict;
END;
$fn$
"""

#: 0007's ``chatbuffer_complete``, and in the same transaction (so at no extra cost) what the
#: model said of the burst and its urgency, kept with the buffer.
COMPLETE_ASSESSED = """
CREATE OR REPLACE FUNCTION chatbuffer_complete_assessed(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_now timestamptz,
    p_note text,
    p_kind text,
    p_content text,
    p_message_id bigint,
    p_urgency integer,
    p_intent text,
    p_actions jsonb,
    p_confidence double precision,
    p_should_respond boolean
)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_done boolean;
BEGIN
    -- First: it takes the conversation's lock, the first lock of every write.
    v_done := chatbuffer_complete(p_account_id, p_conversation_id, p_job_id, p_buffer_id,
        p_owner, p_now, p_note, p_kind, p_content, p_message_id);
    UPDATE message_buffer AS b
       SET urgency = p_urgency, model_intent = p_intent, model_actions = p_actions,
           model_confidence = p_confidence, model_should_respond = p_should_respond
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.id = p_buffer_id;
    RETURN v_done;
END;
$fn$
"""

RECORD_PART_SIGNATURE = (
    "chatbuffer_record_posted(integer, integer, uuid, text, integer, text, bigint, timestamptz)"
)
RECORD_FIRST_SIGNATURE = (
    "chatbuffer_record_posted(integer, integer, uuid, text, text, bigint, timestamptz)"
)
RESERVE_PARTS_SIGNATURE = (
    "chatbuffer_reserve_parts(integer, integer, uuid, uuid, text, timestamptz, interval, text, "
    "text[], integer, timestamptz)"
)
COMPLETE_ASSESSED_SIGNATURE = (
    "chatbuffer_complete_assessed(integer, integer, uuid, uuid, text, timestamptz, text, text, "
    "text, bigint, integer, text, jsonb, double precision, boolean)"
)
LOAD_SIGNATURE = "chatbuffer_load(integer, integer, uuid, uuid, text, integer, boolean)"

#: What 0014 changes in 0008's ``chatbuffer_load``: a posted row's part, and the parts' order.
_POSTED_0008 = (
    "b.sent_at, b.kind, NULL::text, NULL::integer\n      FROM bot_replies AS b",
    "AND b.buffer_id = p_buffer_id\n     ORDER BY b.sent_at;",
)
_POSTED_0014 = (
    "b.sent_at, b.kind, NULL::text, b.part\n      FROM bot_replies AS b",
    "AND b.buffer_id = p_buffer_id\n     ORDER BY b.sent_at, b.part;",
)


def _migration(name: str) -> ModuleType:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"chatbuffer_migration_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(posted: tuple[str, ...]) -> str:
    """0008's ``chatbuffer_load`` (its latest definition) with ``posted`` rows as given."""
    body: str = _migration("0008_conversation_history").LOAD
    body = body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    for old, new in zip(_POSTED_0008, posted, strict=True):
        assert body.count(old) == 1, "0008's posted rows are not where 0014 expects them"
        body = body.replace(old, new)
    return body


LOAD = _load(_POSTED_0014)

#: In creation order (callees first); ``tests/integration/test_distribution.py`` reads them.
FUNCTIONS = {
    RECORD_PART_SIGNATURE: RECORD_PART,
    RECORD_FIRST_SIGNATURE: RECORD_FIRST,
    RESERVE_PARTS_SIGNATURE: RESERVE_PARTS,
    COMPLETE_ASSESSED_SIGNATURE: COMPLETE_ASSESSED,
    LOAD_SIGNATURE: LOAD,
}


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("bot_replies") as batch:
        batch.add_column(sa.Column("part", sa.Integer(), nullable=False, server_default="0"))
    op.drop_index(OLD_UNIQUE, table_name="bot_replies")
    op.create_index(NEW_UNIQUE, "bot_replies", [*KEY, "buffer_id", "kind", "part"], unique=True)
    with op.batch_alter_table("message_buffer") as batch:
        for name, type_ in ASSESSMENT:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.add_column(sa.Column("model_actions", _json(), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    for body in FUNCTIONS.values():
        op.execute(body)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(f"DROP FUNCTION IF EXISTS {COMPLETE_ASSESSED_SIGNATURE}")
        op.execute(f"DROP FUNCTION IF EXISTS {RESERVE_PARTS_SIGNATURE}")
    # Only the first part of a message fits the old key.
    op.execute("DELETE FROM bot_replies WHERE part <> 0")
    op.drop_index(NEW_UNIQUE, table_name="bot_replies")
    op.create_index(OLD_UNIQUE, "bot_replies", [*KEY, "buffer_id", "kind"], unique=True)
    if postgres:
        # 0007's form again, before the column its replacement reads goes.
        op.execute(_migration("0007_worker_functions").RECORD_POSTED)
        op.execute(f"DROP FUNCTION IF EXISTS {RECORD_PART_SIGNATURE}")
        op.execute(_load(_POSTED_0008))
    with op.batch_alter_table("message_buffer") as batch:
        batch.drop_column("model_actions")
        for name, _ in reversed(ASSESSMENT):
            batch.drop_column(name)
    with op.batch_alter_table("bot_replies") as batch:
        batch.drop_column("part")
