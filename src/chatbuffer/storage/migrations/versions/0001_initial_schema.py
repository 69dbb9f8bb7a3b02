"""Initial schema: the rebuild plan's tables, portable to SQLite and PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NOW = sa.text("CURRENT_TIMESTAMP")


def _ts(name: str, *, nullable: bool = True, default: bool = False) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=NOW if default else None
    )


def _key() -> list[sa.Column[object]]:
    return [
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
    ]


def _partial(status: str) -> dict[str, Any]:
    where = sa.text(f"status = '{status}'")
    return {"sqlite_where": where, "postgresql_where": where}


def upgrade() -> None:
    op.create_table(
        "message_buffer",
        sa.Column("id", sa.Uuid(), primary_key=True),
        *_key(),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        _ts("buffer_start_time", nullable=False),
        _ts("buffer_end_time"),
        _ts("last_message_time", nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="active"),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        _ts("processed_at"),
        sa.Column("outcome", sa.Text(), nullable=True),
        _ts("created_at", nullable=False, default=True),
        _ts("updated_at", nullable=False, default=True),
    )
    op.create_index(
        "uq_message_buffer_one_active",
        "message_buffer",
        ["account_id", "conversation_id"],
        unique=True,
        **_partial("active"),
    )
    op.create_index(
        "ix_message_buffer_conversation",
        "message_buffer",
        ["account_id", "conversation_id", "status"],
    )

    op.create_table(
        "buffered_messages",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "buffer_id",
            sa.Uuid(),
            sa.ForeignKey(
                "message_buffer.id",
                ondelete="CASCADE",
                name="fk_buffered_messages_buffer_id_message_buffer",
            ),
            nullable=False,
        ),
        *_key(),
        sa.Column("chatwoot_message_id", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("message_type", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("attachments", JSON, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("sender_info", JSON, nullable=False),
        sa.Column("conversation_info", JSON, nullable=False),
        _ts("received_at", nullable=False),
        sa.Column("processed", sa.Boolean(), nullable=False, server_default=sa.false()),
        _ts("created_at", nullable=False, default=True),
    )
    op.create_index(
        "uq_buffered_messages_chatwoot_message",
        "buffered_messages",
        ["account_id", "conversation_id", "chatwoot_message_id"],
        unique=True,
    )
    op.create_index("ix_buffered_messages_buffer", "buffered_messages", ["buffer_id"])

    op.create_table(
        "buffer_processing_jobs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "buffer_id",
            sa.Uuid(),
            sa.ForeignKey(
                "message_buffer.id", name="fk_buffer_processing_jobs_buffer_id_message_buffer"
            ),
            nullable=False,
        ),
        *_key(),
        _ts("scheduled_for", nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="scheduled"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        _ts("lease_expires_at"),
        _ts("created_at", nullable=False, default=True),
        _ts("updated_at", nullable=False, default=True),
        _ts("processed_at"),
        sa.UniqueConstraint("buffer_id", name="uq_buffer_processing_jobs_buffer_id"),
    )
    op.create_index(
        "ix_buffer_jobs_due", "buffer_processing_jobs", ["scheduled_for"], **_partial("scheduled")
    )
    op.create_index(
        "ix_buffer_jobs_lease",
        "buffer_processing_jobs",
        ["lease_expires_at"],
        **_partial("running"),
    )

    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("chatwoot_conversation_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column(
            "active_buffer_id",
            sa.Uuid(),
            sa.ForeignKey(
                "message_buffer.id", name="fk_conversations_active_buffer_id_message_buffer"
            ),
            nullable=True,
        ),
        _ts("last_message_at"),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("conversation_state", sa.Text(), nullable=False, server_default="idle"),
        _ts("created_at", nullable=False, default=True),
        _ts("updated_at", nullable=False, default=True),
    )
    op.create_index(
        "uq_conversations_chatwoot",
        "conversations",
        ["account_id", "chatwoot_conversation_id"],
        unique=True,
    )

    op.create_table(
        "bot_replies",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "buffer_id",
            sa.Uuid(),
            sa.ForeignKey("message_buffer.id", name="fk_bot_replies_buffer_id_message_buffer"),
            nullable=False,
        ),
        *_key(),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("chatwoot_message_id", sa.BigInteger(), nullable=True),
        _ts("sent_at", nullable=False),
    )
    op.create_index("uq_bot_replies_buffer_kind", "bot_replies", ["buffer_id", "kind"], unique=True)
    op.create_index("ix_bot_replies_conversation", "bot_replies", ["account_id", "conversation_id"])

    flags = op.create_table(
        "feature_flags",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("flag_name", sa.Text(), nullable=False),
        sa.Column("is_enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("description", sa.Text(), nullable=True),
        _ts("created_at", nullable=False, default=True),
        sa.UniqueConstraint("flag_name", name="uq_feature_flags_flag_name"),
    )
    op.bulk_insert(
        flags,
        [
            {"id": uuid.uuid4(), "flag_name": name, "is_enabled": enabled, "description": text}
            for name, enabled, text in [
                ("message_buffering", True, "Enable 30-second message buffering"),
                ("typing_indicators", True, "Show typing indicators during processing"),
                ("enhanced_ai_processing", True, "Use aggregated context for AI responses"),
                ("response_quality_enhancement", False, "Apply post-processing to responses"),
            ]
        ],
    )


def downgrade() -> None:
    op.drop_table("feature_flags")
    op.drop_table("bot_replies")
    op.drop_table("conversations")
    op.drop_table("buffer_processing_jobs")
    op.drop_table("buffered_messages")
    op.drop_table("message_buffer")
