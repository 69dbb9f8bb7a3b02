"""Shared fixtures: one migrated database per backend, emptied between tests.

PostgreSQL runs when ``CHATBUFFER_TEST_POSTGRES_URL`` is set (CI sets it and also sets
``CHATBUFFER_REQUIRE_POSTGRES=1`` so a missing server fails the run instead of skipping).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, text, update
from sqlalchemy.engine import make_url

from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import DEFAULT_FLAGS, feature_flags, metadata
from chatbuffer.testing import MemoryStore

POSTGRES_ENV = "CHATBUFFER_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgres"]


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url and os.environ.get("CHATBUFFER_REQUIRE_POSTGRES") == "1":
        raise RuntimeError(f"{POSTGRES_ENV} must be set when CHATBUFFER_REQUIRE_POSTGRES=1")
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    database.migrate(f"sqlite:///{path}")
    return path


@dataclass(frozen=True)
class ScratchDatabase:
    url: str
    drop: Callable[[], None]


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[ScratchDatabase]:
    """A new, empty PostgreSQL database, dropped (also by ``drop()``) at the end."""
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV}")
    name = f"chatbuffer_{prefix}_{uuid.uuid4().hex[:10]}"
    admin_engine = create_engine(database.sync_url(admin), isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield ScratchDatabase(
            make_url(admin).set(database=name).render_as_string(hide_password=False), drop
        )
    finally:
        drop()
        admin_engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    with scratch_postgres("test") as scratch:
        database.migrate(scratch.url)
        yield scratch.url


def _empty_postgres(url: str) -> None:
    engine = create_engine(database.sync_url(url))
    with engine.begin() as conn:
        kept = {"feature_flags", "schema_compatibility"}
        names = ", ".join(t.name for t in metadata.sorted_tables if t.name not in kept)
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
        for name, (enabled, _) in DEFAULT_FLAGS.items():
            conn.execute(
                update(feature_flags)
                .where(feature_flags.c.flag_name == name)
                .values(is_enabled=enabled)
            )
        conn.execute(delete(feature_flags).where(feature_flags.c.flag_name.not_in(DEFAULT_FLAGS)))
    engine.dispose()


def _database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        path = tmp_path / "chatbuffer.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    return _database_url(request.param, request, tmp_path)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlBufferStore]:
    engine = database.create_engine(db_url, pool_size=5)
    try:
        # The tests drive time with a FakeClock, on PostgreSQL too.
        yield SqlBufferStore(engine, database_clock=False)
    finally:
        await engine.dispose()


@pytest.fixture(params=["memory", *BACKENDS])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MemoryStore | SqlBufferStore]:
    """The in-memory store and the SQL store on each backend, for the contract both keep."""
    if request.param == "memory":
        yield MemoryStore()
        return
    engine = database.create_engine(_database_url(request.param, request, tmp_path), pool_size=5)
    try:
        yield SqlBufferStore(engine, database_clock=False)
    finally:
        await engine.dispose()
