"""Ready to shard: the conversation key leads every key; indexes for history and purge.

Every primary key, unique constraint and foreign key of a conversation-scoped table now starts
with (``account_id``, ``conversation_id``) (``chatwoot_conversation_id`` on ``conversations``), so
each can be enforced inside one shard when the tables are distributed by the conversation
(``docs/scaling.md``). Foreign keys point at the buffer's full key, and those of messages, jobs and
replies cascade, so ``chatbuffer purge`` deletes a finished buffer with everything it owns.

New indexes: a conversation's messages by ``received_at`` and its replies by ``sent_at`` (the
history read no longer sorts the whole past), and finished buffers by ``updated_at`` (purge).

SQLite cannot alter keys, so each table is rebuilt once (batch mode); its indexes are dropped first
and made again afterwards, so partial indexes keep their ``WHERE``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

KEY = ["account_id", "conversation_id"]
CONVERSATION_KEY = ["account_id", "chatwoot_conversation_id"]
BUFFER_KEY = ["account_id", "conversation_id", "id"]
FINISHED = "status IN ('completed', 'superseded', 'cancelled', 'failed')"


class _Index(NamedTuple):
    name: str
    table: str
    columns: list[str]
    unique: bool = False
    where: str | None = None

    def create(self) -> None:
        options: dict[str, Any] = {}
        if self.where is not None:
            options = {"sqlite_where": sa.text(self.where), "postgresql_where": sa.text(self.where)}
        op.create_index(self.name, self.table, self.columns, unique=self.unique, **options)

    def drop(self) -> None:
        op.drop_index(self.name, table_name=self.table)


class _ForeignKey(NamedTuple):
    name: str
    table: str
    columns: list[str]
    ondelete: str | None


class _Table(NamedTuple):
    name: str
    key: list[str]
    foreign_key: tuple[_ForeignKey, _ForeignKey] | None
    """(before, after)"""
    unique: tuple[str, list[str], list[str]] | None = None
    """(name, columns before, columns after)"""
    indexes: tuple[_Index, ...] = ()
    """Every index the table has before and after, unchanged (SQLite rebuilds them)."""


def _fk(table: str, columns: list[str], ondelete: str | None) -> _ForeignKey:
    return _ForeignKey(f"fk_{table}_{columns[-1]}_message_buffer", table, columns, ondelete)


TABLES = [
    _Table(
        "conversations",
        CONVERSATION_KEY,
        (
            _fk("conversations", ["active_buffer_id"], None),
            _fk("conversations", [*CONVERSATION_KEY, "active_buffer_id"], None),
        ),
        indexes=(
            _Index("uq_conversations_chatwoot", "conversations", CONVERSATION_KEY, unique=True),
        ),
    ),
    _Table(
        "buffered_messages",
        KEY,
        (
            _fk("buffered_messages", ["buffer_id"], "CASCADE"),
            _fk("buffered_messages", [*KEY, "buffer_id"], "CASCADE"),
        ),
        indexes=(
            _Index(
                "uq_buffered_messages_chatwoot_message",
                "buffered_messages",
                [*KEY, "chatwoot_message_id"],
                unique=True,
            ),
        ),
    ),
    _Table(
        "buffer_processing_jobs",
        KEY,
        (
            _fk("buffer_processing_jobs", ["buffer_id"], None),
            _fk("buffer_processing_jobs", [*KEY, "buffer_id"], "CASCADE"),
        ),
        unique=("uq_buffer_processing_jobs_buffer_id", ["buffer_id"], [*KEY, "buffer_id"]),
        indexes=(
            _Index(
                "ix_buffer_jobs_due",
                "buffer_processing_jobs",
                ["scheduled_for"],
                where="status = 'scheduled'",
            ),
            _Index(
                "ix_buffer_jobs_lease",
                "buffer_processing_jobs",
                ["lease_expires_at"],
                where="status = 'running'",
            ),
        ),
    ),
    _Table(
        "bot_replies",
        KEY,
        (
            _fk("bot_replies", ["buffer_id"], None),
            _fk("bot_replies", [*KEY, "buffer_id"], "CASCADE"),
        ),
    ),
    _Table(
        "message_buffer",
        KEY,
        None,
        indexes=(
            _Index(
                "uq_message_buffer_one_active",
                "message_buffer",
                KEY,
                unique=True,
                where="status = 'active'",
            ),
            _Index("ix_message_buffer_conversation", "message_buffer", [*KEY, "status"]),
        ),
    ),
]

#: Indexes that change: (before 0005, after 0005).
OLD_INDEXES = [
    _Index("ix_buffered_messages_buffer", "buffered_messages", ["buffer_id"]),
    _Index("uq_bot_replies_buffer_kind", "bot_replies", ["buffer_id", "kind"], unique=True),
    _Index("ix_bot_replies_conversation", "bot_replies", KEY),
]
NEW_INDEXES = [
    _Index("ix_buffered_messages_buffer", "buffered_messages", [*KEY, "buffer_id"]),
    _Index("ix_buffered_messages_history", "buffered_messages", [*KEY, "received_at"]),
    _Index("uq_bot_replies_buffer_kind", "bot_replies", [*KEY, "buffer_id", "kind"], unique=True),
    _Index("ix_bot_replies_history", "bot_replies", [*KEY, "sent_at"]),
    _Index("ix_message_buffer_finished", "message_buffer", ["updated_at"], where=FINISHED),
]


def upgrade() -> None:
    _rekey(old_indexes=OLD_INDEXES, new_indexes=NEW_INDEXES, to_conversation_key=True)


def downgrade() -> None:
    _rekey(old_indexes=NEW_INDEXES, new_indexes=OLD_INDEXES, to_conversation_key=False)


def _rekey(
    *, old_indexes: list[_Index], new_indexes: list[_Index], to_conversation_key: bool
) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    before, after = (0, 1) if to_conversation_key else (1, 0)
    for index in old_indexes:
        index.drop()
    if sqlite:
        for table in TABLES:
            for index in table.indexes:
                index.drop()
    else:
        # PostgreSQL: the foreign keys depend on message_buffer's primary key; drop them first.
        for table in TABLES:
            if table.foreign_key is not None:
                fk = table.foreign_key[before]
                op.drop_constraint(fk.name, fk.table, type_="foreignkey")
    for table in TABLES:
        primary_key = [*table.key, "id"] if to_conversation_key else ["id"]
        with op.batch_alter_table(table.name, recreate="always" if sqlite else "never") as batch:
            if sqlite and table.foreign_key is not None:
                batch.drop_constraint(table.foreign_key[before].name, type_="foreignkey")
            batch.drop_constraint(f"pk_{table.name}", type_="primary")
            batch.create_primary_key(f"pk_{table.name}", primary_key)
            if table.unique is not None:
                name, *columns = table.unique
                batch.drop_constraint(name, type_="unique")
                batch.create_unique_constraint(name, columns[after])
            if sqlite and table.foreign_key is not None:
                _create_fk(table.foreign_key[after], batch)
    if sqlite:
        for table in TABLES:
            for index in table.indexes:
                index.create()
    else:
        for table in TABLES:
            if table.foreign_key is not None:
                _create_fk(table.foreign_key[after], op)
    for index in new_indexes:
        index.create()


def _create_fk(fk: _ForeignKey, where: Any) -> None:
    referred = BUFFER_KEY if len(fk.columns) == 3 else ["id"]
    if where is op:
        op.create_foreign_key(
            fk.name, fk.table, "message_buffer", fk.columns, referred, ondelete=fk.ondelete
        )
    else:
        where.create_foreign_key(
            fk.name, "message_buffer", fk.columns, referred, ondelete=fk.ondelete
        )
