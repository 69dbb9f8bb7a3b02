"""A throwaway PostgreSQL cluster that one test owns and may stop, restart or crash at will.

The shared server on 5432 serves every other test, so it must never be restarted; a fault test
that takes the database away starts its own cluster (``initdb`` into a temporary directory, its
own port and socket directory) and deletes it afterwards. PostgreSQL refuses to run as root, so
when the tests run as root the cluster runs as the ``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.e2e.conftest import free_port

_BIN_ENV = "CHATBUFFER_TEST_PG_BIN"
_OS_USER = "postgres"
_TIMEOUT_S = 60


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live: ``$CHATBUFFER_TEST_PG_BIN``, PATH, or the newest
    Debian-style ``/usr/lib/postgresql/<version>/bin``."""
    configured = os.environ.get(_BIN_ENV)
    if configured:
        return Path(configured) if (Path(configured) / "initdb").exists() else None
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


@dataclass
class PrivatePostgres:
    """One cluster in ``root`` (data, socket and log), listening on 127.0.0.1:``port``."""

    bindir: Path
    root: Path
    port: int
    as_user: str | None  # the OS user to run as (None: the current one)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{log}"
            )

    def initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        # Local socket in our own directory: nothing is shared with the system cluster. fsync
        # off: durability across an OS crash is not what these tests are about, speed is.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client and shuts down cleanly; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def _cannot(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail where PostgreSQL is required (CI), so the restart
    case can never silently drop out of the suite."""
    if os.environ.get("CHATBUFFER_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"a private PostgreSQL cluster is required but cannot be made: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh cluster, running; stopped and deleted at the end. Skips (or, where PostgreSQL is
    required, fails) where none can be made."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _cannot(f"no initdb/pg_ctl found (set {_BIN_ENV} to PostgreSQL's bin directory)")
    as_user: str | None = None
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        # PostgreSQL will not run as root.
        try:
            owner = pwd.getpwnam(_OS_USER)
        except KeyError:
            _cannot(f"running as root and there is no {_OS_USER!r} user to run PostgreSQL")
        if shutil.which("runuser") is None:
            _cannot("running as root and runuser is not available")
        as_user = _OS_USER
    # A short path: the socket path (root + ".s.PGSQL.<port>") must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="cbpg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PrivatePostgres(bindir=bindir, root=root, port=free_port(), as_user=as_user)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        # The postmaster may take a moment to remove its files after stopping.
        deadline = time.monotonic() + 10
        while cluster.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
