"""Smart windows: what the intake remembers of a conversation's rhythm.

Adds ``smart_windows`` (see ``chatbuffer.domain.smart_window``), keyed by the conversation. An
expand migration: the release before it never reads the table.

Revision ID: 0018
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018"
down_revision = "0012"
branch_labels = None
depends_on = None
oldest_compatible_code = down_revision


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.create_table(
        "smart_windows",
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("gap_mean_ms", sa.Float, nullable=False, server_default="0"),
        sa.Column("gap_variance", sa.Float, nullable=False, server_default="0"),
        sa.Column("gap_samples", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_message_id", sa.BigInteger, nullable=True),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("burst", json_type, nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("quiet_ms", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.PrimaryKeyConstraint("account_id", "conversation_id", name="pk_smart_windows"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE smart_windows ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("smart_windows")
