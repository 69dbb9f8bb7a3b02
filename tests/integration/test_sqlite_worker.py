"""SQLite: the worker's transactions on one thread, the writes waiting together in one commit."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select

from chatbuffer.storage.sqlite_worker import SqliteWorker
from chatbuffer.storage.tables import feature_flags


@pytest.fixture
def worker(sqlite_template: Path, tmp_path: Path) -> SqliteWorker:
    path = tmp_path / "chatbuffer.db"
    shutil.copy(sqlite_template, path)
    return SqliteWorker(str(path))


def _add(name: str, *, fail: bool = False):
    def work(conn: Connection) -> str:
        conn.execute(insert(feature_flags).values(id=uuid.uuid4(), flag_name=name))
        if fail:
            raise RuntimeError(f"{name} failed after its insert")
        return name

    return work


def _names(conn: Connection) -> set[str]:
    return set(conn.execute(select(feature_flags.c.flag_name)).scalars())


async def test_a_failing_write_is_rolled_back_alone_and_the_others_are_kept(
    worker: SqliteWorker,
) -> None:
    outcomes = await asyncio.gather(
        *(worker.write(_add(f"flag_{i}", fail=i == 3)) for i in range(8)),
        return_exceptions=True,
    )
    assert [o if isinstance(o, str) else type(o).__name__ for o in outcomes] == [
        "flag_0",
        "flag_1",
        "flag_2",
        "RuntimeError",
        "flag_4",
        "flag_5",
        "flag_6",
        "flag_7",
    ]
    stored = await worker.read(_names)
    assert {f"flag_{i}" for i in range(8)} - stored == {"flag_3"}


async def test_a_write_alone_that_fails_leaves_nothing(worker: SqliteWorker) -> None:
    with pytest.raises(RuntimeError):
        await worker.write(_add("flag_x", fail=True))
    assert "flag_x" not in await worker.read(_names)
    assert await worker.write(_add("flag_y")) == "flag_y"
    assert "flag_y" in await worker.read(_names)
