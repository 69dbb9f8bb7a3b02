"""Migrations on both databases: up, down and up again; RLS on PostgreSQL."""

from __future__ import annotations

import uuid

from alembic import command
from sqlalchemy import create_engine, inspect, text

from chatbuffer.storage import database
from chatbuffer.storage.tables import metadata
from tests.conftest import scratch_postgres


def test_sqlite_upgrades_downgrades_and_upgrades_again(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert database.migrate(url) == database.head_revision(url)
    command.downgrade(database.alembic_config(url), "base")
    engine = create_engine(database.sync_url(url))
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    database.migrate(url)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_postgres_upgrades_downgrades_and_upgrades_again() -> None:
    with scratch_postgres("migrate") as scratch:
        database.migrate(scratch.url)
        command.downgrade(database.alembic_config(scratch.url), "base")
        database.migrate(scratch.url)
        engine = create_engine(database.sync_url(scratch.url))
        assert set(metadata.tables) <= set(inspect(engine).get_table_names())
        engine.dispose()


def test_postgres_denies_rows_to_any_role_but_the_owner(postgres_url: str) -> None:
    role = f"chatbuffer_public_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database.sync_url(postgres_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM feature_flags WHERE flag_name = 'rls_probe'"))
            conn.execute(
                text(
                    "INSERT INTO feature_flags (id, flag_name, is_enabled) "
                    "VALUES (:id, 'rls_probe', true)"
                ),
                {"id": uuid.uuid4()},
            )
            conn.execute(text(f'CREATE ROLE "{role}" NOLOGIN'))
            # Even an explicit grant (the Supabase default for the public schema) shows nothing.
            for table in metadata.tables:
                conn.execute(text(f'GRANT SELECT ON {table} TO "{role}"'))
        with engine.begin() as conn:
            owner_sees = conn.scalar(text("SELECT count(*) FROM feature_flags"))
            conn.execute(text(f'SET LOCAL ROLE "{role}"'))
            public_sees = [
                conn.scalar(text(f"SELECT count(*) FROM {table}")) for table in metadata.tables
            ]
        assert owner_sees >= 5
        assert public_sees == [0] * len(metadata.tables)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM feature_flags WHERE flag_name = 'rls_probe'"))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        engine.dispose()


def test_buffers_stored_before_0004_keep_their_order(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'order.db'}"
    command.upgrade(database.alembic_config(url), "0003")
    engine = create_engine(database.sync_url(url))
    opened = ["2026-01-01 10:00:00", "2026-01-01 10:05:00", "2026-01-01 10:01:00"]
    with engine.begin() as conn:
        for conversation, at in zip([7, 7, 8], opened, strict=True):
            conn.execute(
                text(
                    "INSERT INTO message_buffer (id, account_id, conversation_id, status, "
                    "buffer_start_time, last_message_time, created_at, updated_at) "
                    "VALUES (:id, 1, :c, 'completed', :at, :at, :at, :at)"
                ),
                {"id": uuid.uuid4().hex, "c": conversation, "at": at},
            )
    database.migrate(url)
    with engine.connect() as conn:
        order = conn.execute(
            text(
                "SELECT conversation_id, conversation_seq FROM message_buffer "
                "ORDER BY conversation_id, created_at"
            )
        ).all()
    engine.dispose()
    assert [tuple(row) for row in order] == [(7, 0), (7, 1), (8, 0)]


def _store_one_of_each(url: str) -> dict[str, str]:
    """A conversation with an answered buffer, as revision 0004 stores it; the ids."""
    ids = {name: uuid.uuid4().hex for name in ("conversation", "buffer", "job", "message", "reply")}
    engine = create_engine(database.sync_url(url))
    with engine.begin() as conn:
        at = "2026-01-01 10:00:00"
        conn.execute(
            text(
                "INSERT INTO message_buffer (id, account_id, conversation_id, status, "
                "buffer_start_time, last_message_time, created_at, updated_at) "
                "VALUES (:buffer, 1, 7, 'completed', :at, :at, :at, :at)"
            ),
            {**ids, "at": at},
        )
        conn.execute(
            text(
                "INSERT INTO conversations (id, account_id, chatwoot_conversation_id, "
                "active_buffer_id) VALUES (:conversation, 1, 7, :buffer)"
            ),
            ids,
        )
        conn.execute(
            text(
                "INSERT INTO buffer_processing_jobs (id, buffer_id, account_id, conversation_id, "
                "scheduled_for, status) VALUES (:job, :buffer, 1, 7, :at, 'completed')"
            ),
            {**ids, "at": at},
        )
        conn.execute(
            text(
                "INSERT INTO buffered_messages (id, buffer_id, account_id, conversation_id, "
                "chatwoot_message_id, message_type, sender_info, conversation_info, received_at) "
                "VALUES (:message, :buffer, 1, 7, 99, 'text', '{}', '{}', :at)"
            ),
            {**ids, "at": at},
        )
        conn.execute(
            text(
                "INSERT INTO bot_replies (id, buffer_id, account_id, conversation_id, kind, "
                "content, sent_at) VALUES (:reply, :buffer, 1, 7, 'reply', 'hello', :at)"
            ),
            {**ids, "at": at},
        )
    engine.dispose()
    return ids


def _counts(url: str) -> list[int]:
    engine = create_engine(database.sync_url(url))
    with engine.connect() as conn:
        counts = [
            conn.scalar(text(f"SELECT count(*) FROM {table}"))
            for table in (
                "conversations",
                "message_buffer",
                "buffer_processing_jobs",
                "buffered_messages",
                "bot_replies",
            )
        ]
    engine.dispose()
    return counts


def _rekeying_keeps_rows(url: str) -> None:
    command.upgrade(database.alembic_config(url), "0004")
    _store_one_of_each(url)
    database.migrate(url)
    assert _counts(url) == [1, 1, 1, 1, 1]
    engine = create_engine(database.sync_url(url))
    keys = inspect(engine).get_pk_constraint("buffered_messages")["constrained_columns"]
    engine.dispose()
    assert keys == ["account_id", "conversation_id", "id"]
    command.downgrade(database.alembic_config(url), "0004")
    assert _counts(url) == [1, 1, 1, 1, 1]
    database.migrate(url)
    assert _counts(url) == [1, 1, 1, 1, 1]


def test_rekeying_by_conversation_keeps_every_row_on_sqlite(tmp_path) -> None:
    _rekeying_keeps_rows(f"sqlite:///{tmp_path / 'rekey.db'}")


def test_rekeying_by_conversation_keeps_every_row_on_postgres() -> None:
    with scratch_postgres("rekey") as scratch:
        _rekeying_keeps_rows(scratch.url)
