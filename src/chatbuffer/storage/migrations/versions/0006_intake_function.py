"""PostgreSQL: the whole intake transaction as one server-side function, one round trip.

A webhook used to cost 8 statements in 11 round trips (pre-ping, BEGIN, lock, duplicate check,
active buffer, extend, reschedule, insert, touch, NOTIFY, COMMIT), and every commit NOTIFYed, which
serialises commits cluster-wide. ``chatbuffer_intake`` does the same steps in the same order
under the same row lock, called in autocommit (one statement, one transaction), and NOTIFYs only
when a worker may need to hear: a buffer opened, closed at once, or had its due time moved
earlier. The placement rule mirrors ``chatbuffer.domain.buffer`` (``place``/``due_at``), which
stays authoritative: ``tests/integration/test_intake_function.py`` runs the same arrivals through
both and compares them. SQLite has no server-side functions; nothing to do there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION chatbuffer_intake(
    p_account_id integer,
    p_conversation_id integer,
    p_message_id bigint,
    p_content text,
    p_message_type text,
    p_content_type text,
    p_attachments jsonb,
    p_sender_info jsonb,
    p_conversation_info jsonb,
    p_now timestamptz,
    p_quiet interval,
    p_max_age interval,
    p_max_size integer,
    OUT outcome text,
    OUT human_active_until timestamptz,
    OUT buffer_id uuid,
    OUT opened boolean,
    OUT message_count integer,
    OUT due_at timestamptz,
    OUT closed boolean,
    OUT notified boolean
)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_until timestamptz;
    v_seq bigint;
    v_current uuid;
    v_current_start timestamptz;
    v_current_last timestamptz;
    v_current_count integer;
    v_old_due timestamptz;
    v_start timestamptz;
    v_last timestamptz;
BEGIN
    outcome := 'stored';
    opened := false;
    notified := false;
    closed := false;
    message_count := 0;

    -- The conversation row first (created if new): deliveries for one conversation queue here.
    SELECT c.human_active_until, c.message_count INTO v_until, v_seq
      FROM conversations AS c
     WHERE c.account_id = p_account_id AND c.chatwoot_conversation_id = p_conversation_id
       FOR UPDATE;
    IF NOT FOUND THEN
        -- Two first messages may race: one insert wins, both then queue on the row lock.
        INSERT INTO conversations (id, account_id, chatwoot_conversation_id, created_at, updated_at)
        VALUES (gen_random_uuid(), p_account_id, p_conversation_id, p_now, p_now)
        ON CONFLICT DO NOTHING;
        SELECT c.human_active_until, c.message_count INTO v_until, v_seq
          FROM conversations AS c
         WHERE c.account_id = p_account_id AND c.chatwoot_conversation_id = p_conversation_id
           FOR UPDATE;
    END IF;

    IF v_until IS NOT NULL AND p_now < v_until THEN
        outcome := 'human';
        human_active_until := v_until;
        RETURN;
    END IF;

    IF EXISTS (
        SELECT 1 FROM buffered_messages AS m
         WHERE m.account_id = p_account_id AND m.conversation_id = p_conversation_id
           AND m.chatwoot_message_id = p_message_id
    ) THEN
        outcome := 'duplicate';
        RETURN;
    END IF;

    SELECT b.id, b.buffer_start_time, b.last_message_time, b.message_count
      INTO v_current, v_current_start, v_current_last, v_current_count
      FROM message_buffer AS b
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
       AND b.status = 'active';

    IF FOUND THEN
        -- domain.buffer.due_at of the buffer as stored, under the current policy.
        IF v_current_count >= p_max_size THEN
            v_old_due := v_current_last;
        ELSE
            v_old_due := least(v_current_last + p_quiet,
                               v_current_start + p_max_age);
        END IF;
        -- domain.buffer.is_open: the message joins it.
        IF v_current_count < p_max_size AND p_now < v_old_due THEN
            v_start := v_current_start;
            v_last := greatest(p_now, v_current_last);
            message_count := v_current_count + 1;
            IF message_count >= p_max_size THEN
                due_at := v_last;
            ELSE
                due_at := least(v_last + p_quiet, v_start + p_max_age);
            END IF;
            closed := message_count >= p_max_size OR due_at <= p_now;
            -- Only while still collecting: a worker may have claimed it a moment ago.
            UPDATE message_buffer AS b
               SET last_message_time = v_last,
                   message_count = chatbuffer_intake.message_count,
                   buffer_end_time = chatbuffer_intake.due_at,
                   status = CASE WHEN chatbuffer_intake.closed THEN 'closed' ELSE 'active' END,
                   updated_at = p_now
             WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
               AND b.id = v_current AND b.status = 'active';
            IF FOUND THEN
                UPDATE buffer_processing_jobs AS j
                   SET scheduled_for = chatbuffer_intake.due_at, updated_at = p_now
                 WHERE j.account_id = p_account_id AND j.conversation_id = p_conversation_id
                   AND j.buffer_id = v_current AND j.status = 'scheduled';
                buffer_id := v_current;
            END IF;
        END IF;
        IF buffer_id IS NULL THEN
            UPDATE message_buffer AS b
               SET status = 'closed', updated_at = p_now
             WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
               AND b.id = v_current AND b.status = 'active';
        END IF;
    END IF;

    IF buffer_id IS NULL THEN
        -- domain.buffer.place(None, ...): a new buffer.
        opened := true;
        v_old_due := NULL;
        message_count := 1;
        IF p_max_size <= 1 THEN
            due_at := p_now;
        ELSE
            due_at := least(p_now + p_quiet, p_now + p_max_age);
        END IF;
        closed := message_count >= p_max_size OR due_at <= p_now;
        buffer_id := gen_random_uuid();
        INSERT INTO message_buffer (
            id, account_id, conversation_id, buffer_start_time, last_message_time,
            buffer_end_time, status, message_count, conversation_seq, created_at, updated_at
        ) VALUES (
            buffer_id, p_account_id, p_conversation_id, p_now, p_now, due_at,
            CASE WHEN closed THEN 'closed' ELSE 'active' END, 1, coalesce(v_seq, 0), p_now, p_now
        );
        INSERT INTO buffer_processing_jobs (
            id, buffer_id, account_id, conversation_id, scheduled_for, status, created_at,
            updated_at
        ) VALUES (
            gen_random_uuid(), buffer_id, p_account_id, p_conversation_id, due_at, 'scheduled',
            p_now, p_now
        );
    END IF;

    INSERT INTO buffered_messages (
        id, buffer_id, account_id, conversation_id, chatwoot_message_id, content, message_type,
        content_type, attachments, sender_info, conversation_info, received_at
    ) VALUES (
        gen_random_uuid(), buffer_id, p_account_id, p_conversation_id, p_message_id, p_content,
        p_message_type, p_content_type, p_attachments, p_sender_info, p_conversation_info, p_now
    );

    UPDATE conversations AS c
       SET active_buffer_id = CASE WHEN closed THEN NULL ELSE buffer_id END,
           last_message_at = p_now,
           message_count = c.message_count + 1,
           conversation_state = CASE WHEN closed THEN 'idle' ELSE 'buffering' END,
           updated_at = p_now
     WHERE c.account_id = p_account_id AND c.chatwoot_conversation_id = p_conversation_id;

    -- Wake a worker only when one needs to hear. A buffer waiting for an older one of its
    -- conversation is not claimable: the older one's completion wakes the workers instead.
    IF EXISTS (
        SELECT 1 FROM message_buffer AS e
         WHERE e.account_id = p_account_id AND e.conversation_id = p_conversation_id
           AND e.status IN ('closed', 'processing') AND e.id <> buffer_id
           AND e.conversation_seq < (
               SELECT b.conversation_seq FROM message_buffer AS b
                WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id
                  AND b.id = chatbuffer_intake.buffer_id)
    ) THEN
        RETURN;
    END IF;
    IF NOT closed THEN
        -- An extension moves the due time later (or keeps it): workers sleep towards an
        -- earlier instant already. Whether a new due time is earlier than every other one is
        -- not asked here: that would read other conversations on every webhook (the intake
        -- stays keyed by one conversation), and each listening worker's waker ignores a wake-up
        -- later than the instant it already sleeps towards.
        IF v_old_due IS NOT NULL AND due_at >= v_old_due THEN
            RETURN;
        END IF;
    END IF;
    -- Delivered only if this transaction commits, so a worker never wakes for a buffer it
    -- cannot see yet. ISO 8601 whatever the session's DateStyle.
    PERFORM pg_notify('chatbuffer_wake', to_json(due_at) #>> '{}');
    notified := true;
END;
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS chatbuffer_intake(integer, integer, bigint, text, text, text, "
        "jsonb, jsonb, jsonb, timestamptz, interval, interval, integer)"
    )
