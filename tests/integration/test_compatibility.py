"""Expand, then contract: a release runs on a schema a newer release migrated, when that
release's migrations say so, and `migrate --to` rolls a schema back. Both databases."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select

from chatbuffer.errors import SchemaNotReady, UnknownRevision
from chatbuffer.storage import database
from chatbuffer.storage.tables import schema_compatibility
from tests.conftest import scratch_postgres

THIS_RELEASE = database.MIGRATIONS


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'compat.db'}"
        return
    with scratch_postgres("compat") as scratch:
        yield scratch.url


def _next_release(tmp_path: Path, *, expand: bool) -> Path:
    """This release's migrations plus one more, as the next release would ship them."""
    migrations = tmp_path / "next_release"
    shutil.copytree(THIS_RELEASE, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    head = database.chain(_any_url()).head
    compatible = f'"{head}"' if expand else "revision"
    (migrations / "versions" / "9001_next_release.py").write_text(
        f'''"""The next release's migration, made up by a test."""

import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None
oldest_compatible_code = {compatible}


def upgrade() -> None:
    op.create_table("next_release_notes", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("next_release_notes")
'''
    )
    return migrations


def _any_url() -> str:
    return "sqlite://"


def _as_release(monkeypatch: pytest.MonkeyPatch, migrations: Path) -> None:
    monkeypatch.setattr(database, "MIGRATIONS", migrations)


async def _check(url: str) -> database.SchemaState:
    engine = database.create_engine(url, pool_size=1)
    try:
        return await database.check_schema(engine, url)
    finally:
        await engine.dispose()


def _recorded(url: str) -> tuple[str, str]:
    engine = create_engine(database.sync_url(url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(
                    schema_compatibility.c.revision, schema_compatibility.c.oldest_compatible_code
                )
            ).one()
            return row[0], row[1]
    finally:
        engine.dispose()


def test_every_migration_run_records_the_oldest_code_that_runs_on_the_schema(
    empty_url: str,
) -> None:
    head = database.migrate(empty_url)
    chain = database.chain(empty_url)
    assert _recorded(empty_url) == (head, chain.floor(head or ""))
    # The floor is what the newest migration declares, and this release's newest (0013, the
    # claim function) is an expand one: the release before it still runs. (0014, replies in
    # parts, is a contract one: the release before it names bot_replies' old unique key.)
    assert chain.floor(head or "") == chain.oldest_code[head or ""] == chain.revisions[-2]


async def test_this_release_runs_on_a_schema_an_expand_migration_moved_ahead(
    empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = database.head_revision(empty_url)
    with monkeypatch.context() as newer:
        _as_release(newer, _next_release(tmp_path, expand=True))
        assert database.migrate(empty_url) == "9001"
    state = await _check(empty_url)
    assert (state.current, state.head, state.floor) == ("9001", head, head)
    # `migrate` (as `serve` runs it on SQLite) leaves a newer schema alone instead of failing.
    assert database.migrate(empty_url) == "9001"


async def test_this_release_refuses_a_contract_migration_until_it_is_rolled_back(
    empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = database.head_revision(empty_url)
    next_release = _next_release(tmp_path, expand=False)
    with monkeypatch.context() as newer:
        _as_release(newer, next_release)
        database.migrate(empty_url)
    with pytest.raises(SchemaNotReady, match=f"migrate --to {head}"):
        await _check(empty_url)
    # This release cannot undo a migration it does not ship, and says which release can.
    with pytest.raises(SchemaNotReady, match="with the release that migrated it"):
        database.migrate(empty_url, to=head)
    with monkeypatch.context() as newer:
        _as_release(newer, next_release)
        assert database.migrate(empty_url, to=head) == head
    assert (await _check(empty_url)).current == head
    engine = create_engine(database.sync_url(empty_url))
    try:
        assert not inspect(engine).has_table("next_release_notes")
    finally:
        engine.dispose()


async def test_migrate_to_goes_down_and_up_again(empty_url: str) -> None:
    chain = database.chain(empty_url)
    head, previous = chain.revisions[-1], chain.revisions[-2]
    database.migrate(empty_url)
    assert database.migrate(empty_url, to=previous) == previous
    with pytest.raises(SchemaNotReady, match="run `chatbuffer migrate` first"):
        await _check(empty_url)
    assert database.migrate(empty_url, to=head) == head
    assert (await _check(empty_url)).at_head


def test_migrate_to_an_unknown_revision_names_the_known_ones(empty_url: str) -> None:
    database.migrate(empty_url)
    with pytest.raises(
        UnknownRevision, match="unknown revision 'nope'; this version knows base, 0001"
    ):
        database.migrate(empty_url, to="nope")
    assert _recorded(empty_url)[0] == database.head_revision(empty_url)
