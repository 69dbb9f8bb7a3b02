"""The whole conversation: human agents' messages, history fetched from Chatwoot, the summary.

* ``history_messages``: turns that are neither a contact's buffered message nor a bot reply, one
  row per Chatwoot message: human agents' public messages (outgoing ``message_created``
  webhooks) and, with ``CHATWOOT_USER_TOKEN``, a conversation's messages from before chatbuffer.
* ``conversation_memory``: one row per conversation, the model's rolling summary of the turns
  older than those the prompt shows, and when the earlier history was fetched from Chatwoot.

Both are keyed by the conversation first, like every conversation table (``docs/scaling.md``),
and deny rows to every role but the owner on PostgreSQL (migration 0003).

On PostgreSQL the worker's load (migration 0007's ``chatbuffer_load``) now also returns the
summary, reads only the turns after it, adds the ``history_messages`` turns, and, when asked
(``p_backfill``) for a conversation never fetched, the oldest Chatwoot message id stored of it.
Its arguments and rows change, so it is dropped and made again; the downgrade restores 0007's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

KEY = ["account_id", "conversation_id"]

OLD_LOAD = "chatbuffer_load(integer, integer, uuid, uuid, text, integer)"
NEW_LOAD = "chatbuffer_load(integer, integer, uuid, uuid, text, integer, boolean)"

#: One row per item (``part``): the ``check``; each ``message`` of the burst; the ``summary``;
#: the turns after it (``earlier`` contact messages, ``reply`` bot replies, ``history`` rows);
#: the ``backfill`` point; each ``posted`` intent. ``kind`` is the check's verdict, a history
#: row's role or a posted message's kind; ``turns`` the summary's count.
LOAD = """
CREATE FUNCTION chatbuffer_load(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_history_limit integer,
    p_backfill boolean
)
RETURNS TABLE (
    part text,
    message_id bigint,
    body text,
    message_type text,
    content_type text,
    attachments jsonb,
    sender_info jsonb,
    conversation_info jsonb,
    happened_at timestamptz,
    kind text,
    author text,
    turns integer
)
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    v_before timestamptz;
    v_after timestamptz;
    v_summary text;
    v_turns integer;
    v_backfilled timestamptz;
BEGIN
    -- STABLE: every query below reads the snapshot of the call, so they agree with each other.
    RETURN QUERY SELECT 'check'::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
        NULL::jsonb, NULL::jsonb, NULL::jsonb, NULL::timestamptz,
        chatbuffer_send_check(p_account_id, p_conversation_id, p_job_id, p_buffer_id, p_owner),
        NULL::text, NULL::integer;

    -- The burst, in Chatwoot message-id order (statements.BUFFER_MESSAGES).
    RETURN QUERY SELECT 'message'::text, m.chatwoot_message_id, m.content, m.message_type,
        m.content_type, m.attachments, m.sender_info, m.conversation_info, m.received_at,
        NULL::text, NULL::text, NULL::integer
      FROM buffered_messages AS m
     WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
       AND m.buffer_id = p_buffer_id
     ORDER BY m.chatwoot_message_id;

    -- The rolling summary (statements.MEMORY): history is what came after it.
    SELECT c.summary, c.summary_through, c.summary_turns, c.backfilled_at
      INTO v_summary, v_after, v_turns, v_backfilled
      FROM conversation_memory AS c
     WHERE c.account_id = p_account_id AND c.conversation_id = p_conversation_id;
    IF v_summary IS NOT NULL AND v_after IS NOT NULL THEN
        RETURN QUERY SELECT 'summary'::text, NULL::bigint, v_summary, NULL::text, NULL::text,
            NULL::jsonb, NULL::jsonb, NULL::jsonb, v_after, NULL::text, NULL::text, v_turns;
    ELSE
        v_after := '-infinity'::timestamptz;
    END IF;

    -- History is what came before the burst's first message and after the summary
    -- (statements.EARLIER_MESSAGES, EARLIER_REPLIES and EARLIER_HISTORY); the caller
    -- interleaves and trims it.
    SELECT m.received_at INTO v_before
      FROM buffered_messages AS m
     WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
       AND m.buffer_id = p_buffer_id
     ORDER BY m.chatwoot_message_id
     LIMIT 1;
    IF p_history_limit > 0 AND v_before IS NOT NULL THEN
        RETURN QUERY SELECT 'earlier'::text, NULL::bigint, e.content, NULL::text, NULL::text,
            e.attachments, NULL::jsonb, NULL::jsonb, e.received_at, NULL::text, NULL::text,
            NULL::integer
          FROM (
            SELECT m.content, m.attachments, m.received_at
              FROM buffered_messages AS m
             WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
               AND m.buffer_id <> p_buffer_id AND m.received_at < v_before
               AND m.received_at > v_after
             ORDER BY m.received_at DESC
             LIMIT p_history_limit
          ) AS e;
        RETURN QUERY SELECT 'reply'::text, NULL::bigint, r.content, NULL::text, NULL::text,
            NULL::jsonb, NULL::jsonb, NULL::jsonb, r.sent_at, NULL::text, NULL::text,
            NULL::integer
          FROM (
            SELECT b.content, b.sent_at
              FROM bot_replies AS b
             WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
               AND b.kind = 'reply'
               -- An intent Chatwoot never confirmed may not have reached the contact.
               AND b.chatwoot_message_id IS NOT NULL
               AND b.sent_at < v_before AND b.sent_at > v_after
             ORDER BY b.sent_at DESC
             LIMIT p_history_limit
          ) AS r;
        RETURN QUERY SELECT 'history'::text, x.chatwoot_message_id, x.content, NULL::text,
            NULL::text, x.attachments, NULL::jsonb, NULL::jsonb, x.happened_at, x.role,
            x.author, NULL::integer
          FROM (
            SELECT h.chatwoot_message_id, h.content, h.attachments, h.happened_at, h.role,
                   h.author
              FROM history_messages AS h
             WHERE h.account_id = p_account_id AND h.conversation_id = p_conversation_id
               AND h.happened_at < v_before AND h.happened_at > v_after
             ORDER BY h.happened_at DESC
             LIMIT p_history_limit
          ) AS x;
    END IF;

    -- Never fetched from Chatwoot: fetch what came before the oldest message stored
    -- (statements.FIRST_STORED).
    IF p_backfill AND v_backfilled IS NULL THEN
        RETURN QUERY SELECT 'backfill'::text, least(
            (SELECT min(m.chatwoot_message_id) FROM buffered_messages AS m
              WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id),
            (SELECT min(h.chatwoot_message_id) FROM history_messages AS h
              WHERE h.account_id = p_account_id AND h.conversation_id = p_conversation_id),
            (SELECT min(b.chatwoot_message_id) FROM bot_replies AS b
              WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id)
        ), NULL::text, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb, NULL::jsonb,
            NULL::timestamptz, NULL::text, NULL::text, NULL::integer;
    END IF;

    -- What earlier attempts meant to post, or posted, for this buffer (statements.BUFFER_POSTED).
    RETURN QUERY SELECT 'posted'::text, b.chatwoot_message_id, b.content, NULL::text, NULL::text,
        NULL::jsonb, NULL::jsonb, NULL::jsonb, b.sent_at, b.kind, NULL::text, NULL::integer
      FROM bot_replies AS b
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.buffer_id = p_buffer_id
     ORDER BY b.sent_at;
END;
$fn$
"""

#: The functions this migration defines (``tests/integration/test_distribution.py`` reads them).
FUNCTIONS = {NEW_LOAD: LOAD}


def _previous() -> ModuleType:
    """Migration 0007, whose ``chatbuffer_load`` the downgrade restores."""
    path = Path(__file__).with_name("0007_worker_functions.py")
    spec = importlib.util.spec_from_file_location("chatbuffer_migration_0007", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _now() -> sa.TextClause:
    return sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "history_messages",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("chatwoot_message_id", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("author", sa.Text(), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("attachments", _json(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("happened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint(*KEY, "chatwoot_message_id", name="pk_history_messages"),
    )
    op.create_index(
        "ix_history_messages_history", "history_messages", [*KEY, "happened_at"], unique=False
    )
    op.create_index("ix_history_messages_happened", "history_messages", ["happened_at"])
    op.create_table(
        "conversation_memory",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("summary_through", sa.DateTime(timezone=True), nullable=True),
        sa.Column("summary_turns", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("summarized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("backfilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint(*KEY, name="pk_conversation_memory"),
    )
    op.create_index("ix_conversation_memory_summarized", "conversation_memory", ["summarized_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("history_messages", "conversation_memory"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"DROP FUNCTION IF EXISTS {OLD_LOAD}")
    op.execute(LOAD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {NEW_LOAD}")
        op.execute(_previous().LOAD)
    op.drop_index("ix_conversation_memory_summarized", table_name="conversation_memory")
    op.drop_table("conversation_memory")
    op.drop_index("ix_history_messages_happened", table_name="history_messages")
    op.drop_index("ix_history_messages_history", table_name="history_messages")
    op.drop_table("history_messages")
