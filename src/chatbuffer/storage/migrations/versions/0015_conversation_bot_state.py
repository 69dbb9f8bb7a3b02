"""Each conversation's bot state: handed off (why, since when), off, or active again.

Adds ``conversation_bot_state`` (``chatbuffer.domain.bot_state``), keyed by the conversation. An
expand migration: the release before it never reads the table and acts as if every conversation
were active, as it did.

Revision ID: 0015
Revises: 0017
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0017"
branch_labels = None
depends_on = None
oldest_compatible_code = down_revision


def upgrade() -> None:
    op.create_table(
        "conversation_bot_state",
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.PrimaryKeyConstraint("account_id", "conversation_id", name="pk_conversation_bot_state"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE conversation_bot_state ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("conversation_bot_state")
