"""PostgreSQL: row-level security on every table, denying by default.

With RLS on and no policy, only the tables' owner (the role chatbuffer migrates and runs as) and
roles with BYPASSRLS see rows. A Supabase project's public API roles (``anon``,
``authenticated``) therefore read nothing, even if someone grants them SELECT. SQLite has no roles;
nothing to do there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = (
    "message_buffer",
    "buffered_messages",
    "buffer_processing_jobs",
    "conversations",
    "bot_replies",
    "feature_flags",
    "alembic_version",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
