"""The operators' live controls: per-inbox flags, the rollout percentage and its canaries.

Adds ``bot_controls`` (a named text value per row; see ``chatbuffer.domain.control``). An expand
migration: the release before it never reads the table and runs as if every control were at its
default.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None
oldest_compatible_code = down_revision


def upgrade() -> None:
    op.create_table(
        "bot_controls",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE bot_controls ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("bot_controls")
