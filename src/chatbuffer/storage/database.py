"""Engines, URLs, SQLite pragmas and the schema-version check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, pool
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chatbuffer.errors import ConfigurationError, SchemaNotReady, UnknownRevision
from chatbuffer.storage import compatibility

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


def chain(url: str) -> compatibility.Chain:
    return compatibility.Chain.of(ScriptDirectory.from_config(alembic_config(url)))


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where the database's schema stands against this code's migrations."""

    current: str | None
    head: str | None
    #: The oldest code a newer release recorded as able to run on it (None if none did).
    floor: str | None

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def ahead(self, known: compatibility.Chain) -> bool:
        """The schema was migrated by a newer release: its revision is not one this code ships."""
        return self.current is not None and self.current not in known.revisions


def _read_state(connection: Connection, head: str | None) -> SchemaState:
    return SchemaState(
        current=MigrationContext.configure(connection).get_current_revision(),
        head=head,
        floor=compatibility.read_floor(connection),
    )


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


async def check_schema(engine: AsyncEngine, url: str) -> SchemaState:
    """Refuse to run on a schema this code cannot use.

    The schema must be at this code's head, or ahead of it by migrations that a newer release
    recorded as leaving this code working (expand, then contract: see ``compatibility``).
    """
    known = chain(url)
    async with engine.connect() as conn:
        state = await conn.run_sync(_read_state, known.head)
    if state.at_head:
        return state
    if not state.ahead(known):
        found = state.current or "an empty database"
        raise SchemaNotReady(
            f"the database schema is at {found}, this version needs {state.head}; "
            "run `chatbuffer migrate` first"
        )
    if state.floor is not None and known.runs_on(state.floor):
        return state
    raise SchemaNotReady(
        f"the database schema is at {state.current}, migrated by a newer release that this "
        f"version ({state.head}) cannot run beside; start the newer release, or roll the "
        f"schema back with its `chatbuffer migrate --to {state.head}`"
    )


def schema_state(url: str) -> SchemaState:
    """The schema's state, read synchronously (before the event loop starts)."""
    engine = create_sync_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return _read_state(conn, head_revision(url))
    finally:
        engine.dispose()


def migrate(url: str, to: str | None = None) -> str | None:
    """Move the schema to ``to`` (default: this code's head), up or down (blocking; run before
    the event loop starts). Returns the revision the schema is at afterwards.

    A schema a newer release migrated ahead of this code is left as it is: this code cannot
    downgrade migrations it does not ship, and ``check_schema`` decides whether it may run.
    """
    from alembic import command

    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    known = chain(url)
    target = to or known.head
    if target is None:
        return None
    if target != "base" and target not in known.revisions:
        raise UnknownRevision(
            f"unknown revision {target!r}; this version knows "
            + ", ".join(("base", *known.revisions))
        )
    state = schema_state(url)
    if state.ahead(known):
        if to is None:
            return state.current
        raise SchemaNotReady(
            f"the database schema is at {state.current}, which this version does not ship; "
            f"run `chatbuffer migrate --to {target}` with the release that migrated it"
        )
    current = state.current
    if current == target:
        return current
    order = ("base", *known.revisions)
    if order.index(target) > order.index(current or "base"):
        command.upgrade(alembic_config(url), target)
    else:
        command.downgrade(alembic_config(url), target)
    return None if target == "base" else target
