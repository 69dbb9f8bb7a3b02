"""Alembic environment: one migration history for SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from chatbuffer.storage import compatibility
from chatbuffer.storage.tables import metadata

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            # In the same transaction as the version stamp: a release that does not know the
            # new revisions reads from here whether it may still run.
            compatibility.record_floor(
                connection,
                compatibility.Chain.of(ScriptDirectory.from_config(config)),
                context.get_context().get_current_revision(),
            )
        # SQLite's DDL is not transactional to Alembic, which then leaves the row above in a
        # transaction of SQLAlchemy's own that closing the connection would roll back.
        if connection.in_transaction():
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `chatbuffer migrate`")
run_migrations_online()
