"""Engines, URLs, SQLite pragmas and the schema-version check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chatbuffer.errors import ConfigurationError, SchemaNotReady

MIGRATIONS = Path(__file__).parent / "migrations"

#: Execution option marking a connection that only reads (SQLite then begins a deferred
#: transaction instead of taking the write lock).
READ_ONLY = "chatbuffer_read_only"


def async_url(url: str) -> str:
    """The URL as users write it, with the async driver this service uses."""
    return _with_driver(url, sqlite="aiosqlite", postgresql="psycopg")


def sync_url(url: str) -> str:
    """The URL with the blocking driver Alembic uses."""
    return _with_driver(url, sqlite="pysqlite", postgresql="psycopg")


def _with_driver(url: str, *, sqlite: str, postgresql: str) -> str:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError("DATABASE_URL is not a valid database URL") from exc
    backend = parsed.get_backend_name()
    if backend in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername=f"postgresql+{postgresql}")
    elif backend == "sqlite":
        parsed = parsed.set(drivername=f"sqlite+{sqlite}")
    else:
        raise ConfigurationError(f"DATABASE_URL uses an unsupported database: {backend}")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def psycopg_conninfo(url: str) -> str:
    """A libpq connection string for the LISTEN connection, which bypasses SQLAlchemy."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine; on SQLite, WAL plus ``BEGIN IMMEDIATE`` so writers queue instead of fail."""
    # hide_parameters: a database error must not carry a customer's message into the logs.
    if is_sqlite(url):
        engine = create_async_engine(
            async_url(url), connect_args={"timeout": 30}, hide_parameters=True
        )
        configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        # A hard cap: replicas times pool size is the connection budget to plan PostgreSQL for.
        max_overflow=0,
        # No ping before each use (a round trip per checkout). A connection a database restart
        # broke fails on its first statement instead; SQLAlchemy then drops the whole pool, the
        # intake call is made once more on a fresh connection (SqlBufferStore._call), and other
        # callers retry as they do after any storage error.
        pool_pre_ping=False,
        hide_parameters=True,
    )


def configure_sqlite(sync_engine: Engine) -> None:
    """WAL, FULL sync, foreign keys, a busy timeout, and SQLAlchemy's ``begin`` deciding when
    transactions start: a plain BEGIN to read (``READ_ONLY``), BEGIN IMMEDIATE to write."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged webhook survives power loss, not just a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            # A snapshot for reading; in WAL mode it neither waits for nor blocks writers.
            connection.exec_driver_sql("BEGIN")
            return
        # Take the write lock up front: SQLite's deferred BEGIN fails with SQLITE_BUSY when two
        # readers both try to upgrade, while IMMEDIATE simply waits its turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


async def check_schema(engine: AsyncEngine, url: str) -> None:
    """Refuse to run on a schema that is not at this code's migration head."""
    current = await current_revision(engine)
    head = head_revision(url)
    if current != head:
        found = current or "an empty database"
        raise SchemaNotReady(
            f"the database schema is at {found}, this version needs {head}; "
            "run `chatbuffer migrate` first"
        )


def migrate(url: str) -> str | None:
    """Upgrade the schema to the head revision (blocking; run before the event loop starts)."""
    from alembic import command

    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
    return head_revision(url)
