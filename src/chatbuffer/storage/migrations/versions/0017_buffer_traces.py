"""A trace of each buffer's model requests: ``buffer_traces`` (``chatbuffer buffers trace``).

One row per request the worker made for a buffer: the request body as sent, the model's text as it
answered, the parsed decision or the error. Keyed by the conversation first, like every
conversation table, referencing its buffer (ON DELETE CASCADE, so retention's deletes take it
along), and denying rows to every role but the owner on PostgreSQL (migration 0003).

An expand migration: the release before it never reads or writes the table.

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0017"
down_revision = "0014"
branch_labels = None
depends_on = None
oldest_compatible_code = down_revision

KEY = ["account_id", "conversation_id"]


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "buffer_traces",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("buffer_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("request", _json(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("decision", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint(*KEY, "id", name="pk_buffer_traces"),
        sa.ForeignKeyConstraint(
            [*KEY, "buffer_id"],
            ["message_buffer.account_id", "message_buffer.conversation_id", "message_buffer.id"],
            name="fk_buffer_traces_buffer_id_message_buffer",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_buffer_traces_buffer", "buffer_traces", [*KEY, "buffer_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE buffer_traces ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_index("ix_buffer_traces_buffer", table_name="buffer_traces")
    op.drop_table("buffer_traces")
