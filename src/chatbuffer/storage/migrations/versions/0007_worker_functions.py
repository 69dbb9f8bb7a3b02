"""PostgreSQL: the worker's transactions on a held buffer as server-side functions.

Answering a buffer used to cost about two dozen statements after the claim, each a round trip
and about 200 µs of the worker's CPU in SQLAlchemy: a read transaction to load it, another for
the send check, the send reservation (lock, lease hold, check, intent) and the completion (lock,
job, buffer, messages, conversation, wake-up). Each of those is now one function call in
autocommit: one statement, one transaction, one round trip.

* ``chatbuffer_load``: the send check, the burst, the conversation's earlier turns and the
  buffer's earlier send intents, one row per item (``part`` says which), in one snapshot.
* ``chatbuffer_reserve_send``: lock the conversation, keep the lease for ``p_hold`` on the
  database's clock, check, record the intent; returns ``send``, ``newer`` or ``cancelled``.
* ``chatbuffer_complete``, ``chatbuffer_release``, ``chatbuffer_fail``: how a held job ends,
  conditional on still holding its lease, with the same wake-up for a newer buffer that waited.

The statements, the lock order (the conversation row first) and the clock (``p_clock``, or
``statement_timestamp()`` when NULL) are those of ``chatbuffer.storage.statements``, which stay
in use on SQLite; every statement is keyed by (account_id, conversation_id).
``tests/integration/test_store.py`` runs the same contract against both databases.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Whether a held buffer may still be answered (``statements.BEFORE_SEND``): ``cancelled`` when
#: the job is not this owner's running job or its buffer is no longer processing, ``newer`` when
#: the conversation has a buffer opened after it that no worker has taken yet, else ``send``.
SEND_CHECK = """
CREATE OR REPLACE FUNCTION chatbuffer_send_check(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text
)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_seq bigint;
BEGIN
    SELECT b.conversation_seq INTO v_seq
      FROM buffer_processing_jobs AS j
      JOIN message_buffer AS b
        ON b.account_id = j.account_id AND b.conversation_id = j.conversation_id
       AND b.id = j.buffer_id
     WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
       AND j.id = p_job_id AND j.status = 'running' AND j.lease_owner = p_owner
       AND b.id = p_buffer_id AND b.status = 'processing';
    IF NOT FOUND THEN
        RETURN 'cancelled';
    END IF;
    IF EXISTS (
        SELECT 1 FROM message_buffer AS n
         WHERE n.account_id = p_account_id AND n.conversation_id = p_conversation_id
           AND n.status IN ('active', 'closed') AND n.conversation_seq > v_seq
    ) THEN
        RETURN 'newer';
    END IF;
    RETURN 'send';
END;
$fn$
"""

LOAD = """
CREATE OR REPLACE FUNCTION chatbuffer_load(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_history_limit integer
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
    kind text
)
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    v_before timestamptz;
BEGIN
    -- STABLE: every query below reads the snapshot of the call, so they agree with each other.
    RETURN QUERY SELECT 'check'::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
        NULL::jsonb, NULL::jsonb, NULL::jsonb, NULL::timestamptz,
        chatbuffer_send_check(p_account_id, p_conversation_id, p_job_id, p_buffer_id, p_owner);

    -- The burst, in Chatwoot message-id order (statements.BUFFER_MESSAGES).
    RETURN QUERY SELECT 'message'::text, m.chatwoot_message_id, m.content, m.message_type,
        m.content_type, m.attachments, m.sender_info, m.conversation_info, m.received_at,
        NULL::text
      FROM buffered_messages AS m
     WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
       AND m.buffer_id = p_buffer_id
     ORDER BY m.chatwoot_message_id;

    -- History is what came before the burst's first message (statements.EARLIER_MESSAGES and
    -- EARLIER_REPLIES); the caller interleaves and trims it.
    SELECT m.received_at INTO v_before
      FROM buffered_messages AS m
     WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
       AND m.buffer_id = p_buffer_id
     ORDER BY m.chatwoot_message_id
     LIMIT 1;
    IF p_history_limit > 0 AND v_before IS NOT NULL THEN
        RETURN QUERY SELECT 'earlier'::text, NULL::bigint, e.content, NULL::text, NULL::text,
            e.attachments, NULL::jsonb, NULL::jsonb, e.received_at, NULL::text
          FROM (
            SELECT m.content, m.attachments, m.received_at
              FROM buffered_messages AS m
             WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
               AND m.buffer_id <> p_buffer_id AND m.received_at < v_before
             ORDER BY m.received_at DESC
             LIMIT p_history_limit
          ) AS e;
        RETURN QUERY SELECT 'reply'::text, NULL::bigint, r.content, NULL::text, NULL::text,
            NULL::jsonb, NULL::jsonb, NULL::jsonb, r.sent_at, NULL::text
          FROM (
            SELECT b.content, b.sent_at
              FROM bot_replies AS b
             WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
               AND b.kind = 'reply'
               -- An intent Chatwoot never confirmed may not have reached the contact.
               AND b.chatwoot_message_id IS NOT NULL
               AND b.sent_at < v_before
             ORDER BY b.sent_at DESC
             LIMIT p_history_limit
          ) AS r;
    END IF;

    -- What earlier attempts meant to post, or posted, for this buffer (statements.BUFFER_POSTED).
    RETURN QUERY SELECT 'posted'::text, b.chatwoot_message_id, b.content, NULL::text, NULL::text,
        NULL::jsonb, NULL::jsonb, NULL::jsonb, b.sent_at, b.kind
      FROM bot_replies AS b
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.buffer_id = p_buffer_id
     ORDER BY b.sent_at;
END;
$fn$
"""

#: Record an intent, or fill in the id of one; a row that already has an id is kept
#: (``SqlBufferStore._record_posted``). The caller holds the conversation's lock.
RECORD_POSTED = """
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
    IF p_message_id IS NOT NULL THEN
        UPDATE bot_replies AS b
           SET chatwoot_message_id = p_message_id
         WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
           AND b.buffer_id = p_buffer_id AND b.kind = p_kind
           AND b.chatwoot_message_id IS NULL;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    INSERT INTO bot_replies (
        id, buffer_id, account_id, conversation_id, kind, content, chatwoot_message_id, sent_at
    ) VALUES (
        gen_random_uuid(), p_buffer_id, p_account_id, p_conversation_id, p_kind, p_content,
        p_message_id, p_now
    )
    ON CONFLICT (account_id, conversation_id, buffer_id, kind) DO NOTHING;
END;
$fn$
"""

#: The conversation's row lock, the first lock of every write (``statements.LOCK_CONVERSATION``).
LOCK = """
CREATE OR REPLACE FUNCTION chatbuffer_lock_conversation(
    p_account_id integer,
    p_conversation_id integer
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM 1
       FROM conversations AS c
      WHERE c.account_id = p_account_id AND c.chatwoot_conversation_id = p_conversation_id
        FOR UPDATE;
END;
$fn$
"""

#: A buffer held back behind the one just finished is claimable now: wake the workers with its
#: due time (``statements.WAKE_WAITING``), delivered on commit.
WAKE_WAITING = """
CREATE OR REPLACE FUNCTION chatbuffer_wake_waiting(
    p_account_id integer,
    p_conversation_id integer,
    p_buffer_id uuid
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_next timestamptz;
BEGIN
    SELECT min(j.scheduled_for) INTO v_next
      FROM buffer_processing_jobs AS j
     WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
       AND j.status = 'scheduled' AND j.buffer_id <> p_buffer_id;
    IF v_next IS NOT NULL THEN
        PERFORM pg_notify('chatbuffer_wake', to_json(v_next) #>> '{}');
    END IF;
END;
$fn$
"""

RESERVE_SEND = """
CREATE OR REPLACE FUNCTION chatbuffer_reserve_send(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_clock timestamptz,
    p_hold interval,
    p_kind text,
    p_content text,
    p_message_id bigint,
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
    -- Also on "newer": if the burst cannot be folded into the newer buffer, this reply is sent
    -- after all. An intent left on a superseded buffer was never posted.
    IF v_verdict <> 'cancelled' THEN
        PERFORM chatbuffer_record_posted(
            p_account_id, p_conversation_id, p_buffer_id, p_kind, p_content, p_message_id, p_now);
    END IF;
    RETURN v_verdict;
END;
$fn$
"""

COMPLETE = """
CREATE OR REPLACE FUNCTION chatbuffer_complete(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_now timestamptz,
    p_note text,
    p_kind text,
    p_content text,
    p_message_id bigint
)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM chatbuffer_lock_conversation(p_account_id, p_conversation_id);
    -- What Chatwoot accepted is recorded even when the lease is lost meanwhile.
    IF p_kind IS NOT NULL THEN
        PERFORM chatbuffer_record_posted(
            p_account_id, p_conversation_id, p_buffer_id, p_kind, p_content, p_message_id, p_now);
    END IF;
    UPDATE buffer_processing_jobs AS j
       SET status = 'completed', lease_owner = NULL, lease_expires_at = NULL,
           updated_at = p_now, processed_at = p_now
     WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
       AND j.id = p_job_id AND j.status = 'running' AND j.lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE message_buffer AS b
       SET status = 'completed', outcome = p_note, processed_at = p_now, updated_at = p_now
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.id = p_buffer_id AND b.status = 'processing';
    UPDATE buffered_messages AS m
       SET processed = true
     WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
       AND m.buffer_id = p_buffer_id;
    UPDATE conversations AS c
       SET conversation_state = 'idle', updated_at = p_now
     WHERE c.account_id = p_account_id AND c.chatwoot_conversation_id = p_conversation_id
       AND c.conversation_state = 'processing';
    PERFORM chatbuffer_wake_waiting(p_account_id, p_conversation_id, p_buffer_id);
    RETURN true;
END;
$fn$
"""

RELEASE = """
CREATE OR REPLACE FUNCTION chatbuffer_release(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_now timestamptz,
    p_error text,
    p_retry_at timestamptz
)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM chatbuffer_lock_conversation(p_account_id, p_conversation_id);
    UPDATE buffer_processing_jobs AS j
       SET status = 'scheduled', lease_owner = NULL, lease_expires_at = NULL,
           scheduled_for = p_retry_at, error_message = p_error, updated_at = p_now
     WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
       AND j.id = p_job_id AND j.status = 'running' AND j.lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE message_buffer AS b
       SET status = 'closed', updated_at = p_now
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.id = p_buffer_id AND b.status = 'processing';
    PERFORM pg_notify('chatbuffer_wake', to_json(p_retry_at) #>> '{}');
    RETURN true;
END;
$fn$
"""

FAIL = """
CREATE OR REPLACE FUNCTION chatbuffer_fail(
    p_account_id integer,
    p_conversation_id integer,
    p_job_id uuid,
    p_buffer_id uuid,
    p_owner text,
    p_now timestamptz,
    p_error text
)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM chatbuffer_lock_conversation(p_account_id, p_conversation_id);
    UPDATE buffer_processing_jobs AS j
       SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL,
           error_message = p_error, updated_at = p_now, processed_at = p_now
     WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
       AND j.id = p_job_id AND j.status = 'running' AND j.lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE message_buffer AS b
       SET status = 'failed', outcome = p_error, processed_at = p_now, updated_at = p_now
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.id = p_buffer_id AND b.status = 'processing';
    UPDATE conversations AS c
       SET conversation_state = 'idle', updated_at = p_now
     WHERE c.account_id = p_account_id AND c.chatwoot_conversation_id = p_conversation_id
       AND c.conversation_state = 'processing';
    PERFORM chatbuffer_wake_waiting(p_account_id, p_conversation_id, p_buffer_id);
    RETURN true;
END;
$fn$
"""

#: In creation order (callees first); dropped in reverse.
FUNCTIONS = {
    "chatbuffer_send_check(integer, integer, uuid, uuid, text)": SEND_CHECK,
    "chatbuffer_load(integer, integer, uuid, uuid, text, integer)": LOAD,
    "chatbuffer_record_posted(integer, integer, uuid, text, text, bigint, timestamptz)": (
        RECORD_POSTED
    ),
    "chatbuffer_lock_conversation(integer, integer)": LOCK,
    "chatbuffer_wake_waiting(integer, integer, uuid)": WAKE_WAITING,
    "chatbuffer_reserve_send(integer, integer, uuid, uuid, text, timestamptz, interval, text, "
    "text, bigint, timestamptz)": RESERVE_SEND,
    "chatbuffer_complete(integer, integer, uuid, uuid, text, timestamptz, text, text, text, "
    "bigint)": COMPLETE,
    "chatbuffer_release(integer, integer, uuid, uuid, text, timestamptz, text, timestamptz)": (
        RELEASE
    ),
    "chatbuffer_fail(integer, integer, uuid, uuid, text, timestamptz, text)": FAIL,
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
