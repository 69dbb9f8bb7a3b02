"""PostgreSQL: the claim as a server-side function, planned once per connection.

The one-statement claim (``statements.CLAIM``) is 4.3 kB of SQL, longer than the 4,096 bytes
psycopg prepares, so PostgreSQL parsed and planned it again on every call (about 1.5 ms of the
5 ms a claim of 64 took with 20,000 due jobs). ``chatbuffer_claim`` runs the same statement from
plpgsql, which keeps the plan for the session: the call itself is a short statement that psycopg
prepares.

The statement is ``statements.CLAIM`` written out (a migration keeps the text it was made with):
two ordered scans of the partial indexes (expired leases, then due jobs), each stopped at
``p_limit`` and skipping rows another transaction holds; then the jobs taken, their buffers
marked ``processing`` and their conversations ``processing`` (skipped when intake holds the row),
each joined to the picked rows on the whole conversation key. It is the one statement that reads
across conversations; each shard could still answer it alone.

An expand migration: a new function nobody before this release calls, so the previous release
runs on it unchanged.

Revision ID: 0013
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0015"
branch_labels = None
depends_on = None
oldest_compatible_code = down_revision

CLAIM = """
CREATE OR REPLACE FUNCTION chatbuffer_claim(
    p_now timestamptz,
    p_owner text,
    p_lease interval,
    p_limit integer,
    p_clock timestamptz
)
RETURNS TABLE (
    job_id uuid,
    buffer_id uuid,
    account_id integer,
    conversation_id integer,
    attempts integer,
    scheduled_for timestamptz,
    error_message text,
    claimed_at timestamptz
)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
BEGIN
    -- The clock stays an expression of the statement (not a variable set before it), so the
    -- plan compares the indexes with statement_timestamp() exactly as the statement did.
    RETURN QUERY
    WITH expired AS (
        SELECT j.id, j.buffer_id, j.account_id, j.conversation_id
          FROM buffer_processing_jobs AS j
          JOIN message_buffer AS b
            ON b.account_id = j.account_id AND b.conversation_id = j.conversation_id
           AND b.id = j.buffer_id
         WHERE j.status = 'running'
           AND j.lease_expires_at < coalesce(p_clock, statement_timestamp())
           AND b.status IN ('active', 'closed', 'processing')
           AND NOT EXISTS (
               SELECT 1 FROM message_buffer AS e
                WHERE e.account_id = b.account_id AND e.conversation_id = b.conversation_id
                  AND e.status IN ('closed', 'processing')
                  AND e.conversation_seq < b.conversation_seq)
         ORDER BY j.lease_expires_at
         LIMIT p_limit
           FOR UPDATE OF j, b SKIP LOCKED
    ), scheduled AS (
        SELECT j.id, j.buffer_id, j.account_id, j.conversation_id
          FROM buffer_processing_jobs AS j
          JOIN message_buffer AS b
            ON b.account_id = j.account_id AND b.conversation_id = j.conversation_id
           AND b.id = j.buffer_id
         WHERE j.status = 'scheduled'
           AND j.scheduled_for <= coalesce(p_clock, statement_timestamp())
           AND b.status IN ('active', 'closed', 'processing')
           AND NOT EXISTS (
               SELECT 1 FROM message_buffer AS e
                WHERE e.account_id = b.account_id AND e.conversation_id = b.conversation_id
                  AND e.status IN ('closed', 'processing')
                  AND e.conversation_seq < b.conversation_seq)
         ORDER BY j.scheduled_for
         LIMIT p_limit
           FOR UPDATE OF j, b SKIP LOCKED
    ), picked AS (
        (SELECT x.id, x.buffer_id, x.account_id, x.conversation_id FROM expired AS x
         UNION ALL
         SELECT s.id, s.buffer_id, s.account_id, s.conversation_id FROM scheduled AS s)
        LIMIT p_limit
    ), claimed AS (
        UPDATE buffer_processing_jobs AS j
           SET status = 'running', attempts = j.attempts + 1, lease_owner = p_owner,
               lease_expires_at = coalesce(p_clock, statement_timestamp()) + p_lease,
               updated_at = p_now
          FROM picked AS p
         WHERE j.account_id = p.account_id AND j.conversation_id = p.conversation_id
           AND j.id = p.id
        RETURNING j.id, j.buffer_id, j.account_id, j.conversation_id, j.attempts,
                  j.scheduled_for, j.error_message,
                  coalesce(p_clock, statement_timestamp()) AS claimed_at
    ), processing AS (
        UPDATE message_buffer AS b
           SET status = 'processing', updated_at = p_now
          FROM claimed AS c
         WHERE b.account_id = c.account_id AND b.conversation_id = c.conversation_id
           AND b.id = c.buffer_id
    ), marked AS (
        -- Informational state: a conversation row intake holds right now is skipped.
        UPDATE conversations AS v
           SET conversation_state = 'processing', updated_at = p_now
          FROM (SELECT l.account_id, l.chatwoot_conversation_id
                  FROM conversations AS l
                  JOIN claimed AS c
                    ON l.account_id = c.account_id
                   AND l.chatwoot_conversation_id = c.conversation_id
                   FOR UPDATE OF l SKIP LOCKED) AS k
         WHERE v.account_id = k.account_id
           AND v.chatwoot_conversation_id = k.chatwoot_conversation_id
    )
    SELECT c.id, c.buffer_id, c.account_id, c.conversation_id, c.attempts, c.scheduled_for,
           c.error_message, c.claimed_at
      FROM claimed AS c;
END;
$fn$
"""

FUNCTIONS = {
    "chatbuffer_claim(timestamptz, text, interval, integer, timestamptz)": CLAIM,
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for body in FUNCTIONS.values():
        op.execute(body)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
