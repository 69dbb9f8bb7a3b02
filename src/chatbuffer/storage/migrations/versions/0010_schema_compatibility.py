"""Record which code may run on the schema, so a rolled-back release can tell.

Adds ``schema_compatibility`` (one row: the schema's revision and the oldest code revision that
runs on it; see ``chatbuffer.storage.compatibility``). The environment fills it after every
migration run. An expand migration: the release before it runs on it unchanged.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None
#: A new table nobody before this release reads: the previous release's code runs on it.
oldest_compatible_code = down_revision


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.Text, nullable=False),
        sa.Column("oldest_compatible_code", sa.Text, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_schema_compatibility_one_row"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE schema_compatibility ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("schema_compatibility")
