"""Order a conversation's buffers by a sequence taken under the conversation's lock.

Ordering by ``created_at`` trusted the clock of whichever process stored the message, read before
it waited for the lock: a delivery delayed past the window could open a buffer that looked older
than the one already being answered, and both were answered. ``conversation_seq`` is the
conversation's message count when the buffer opened, read under the row lock, so it grows strictly
in the order buffers were really opened, whatever the clocks say.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message_buffer") as batch:
        batch.add_column(
            sa.Column("conversation_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
    # Existing buffers keep the order they had: 0, 1, 2… per conversation, which stays below the
    # conversation's message count (every buffer was opened by a message), so new buffers sort last.
    op.execute(
        """
        UPDATE message_buffer SET conversation_seq = (
            SELECT COUNT(*) FROM message_buffer AS earlier
            WHERE earlier.account_id = message_buffer.account_id
              AND earlier.conversation_id = message_buffer.conversation_id
              AND (earlier.created_at < message_buffer.created_at
                   OR (earlier.created_at = message_buffer.created_at
                       AND earlier.id < message_buffer.id))
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("message_buffer") as batch:
        batch.drop_column("conversation_seq")
