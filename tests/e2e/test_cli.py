"""The ``chatbuffer`` console script as an operator runs it: exit codes, output, readiness.

Every command runs as a real subprocess with an environment built from scratch, in a temporary
working directory, so nothing from the developer's shell or the repository leaks in.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2
import pytest

from chatbuffer.storage import database
from tests.conftest import scratch_postgres
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e

UNREACHABLE_PASSWORD = "hunter2"
UNREACHABLE_PG = f"postgresql://user:{UNREACHABLE_PASSWORD}@127.0.0.1:1/db"
HEAD = database.head_revision("sqlite://")
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
# What ``serve`` and ``worker`` need besides a database; nothing listens on port 1.
WORKER_SETTINGS = {
    "OPENAI_API_KEY": "sk-cli-test",
    "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
    "CHATWOOT_BASE_URL": "http://127.0.0.1:1",
    "CHATWOOT_API_TOKEN": "cli-test-token",
}


def clean_env(**settings: str) -> dict[str, str]:
    """Only what a Python process needs, plus the given settings."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for name in ("HOME", "SYSTEMROOT", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(settings)
    return env


def chatbuffer(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatbuffer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_refused(
    result: subprocess.CompletedProcess[str], *needles: str, one_line: bool = True
) -> str:
    """Exit 2, no traceback, nothing on stdout, and stderr ending in one ``chatbuffer: error:``
    line that contains ``needles``; with ``one_line``, that line is all stderr holds."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert result.stdout == "", output
    lines = result.stderr.splitlines()
    if one_line:
        assert len(lines) == 1, output
    assert lines, output
    line = lines[-1]
    assert line.startswith("chatbuffer: error: "), output
    for needle in needles:
        assert needle in line, line
    return line


class Server:
    """A long-running ``chatbuffer serve`` / ``api`` / ``worker`` process (HTTP on a free port)."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"{command}-{self.port}.log"
        # A worker serves only its metrics, on this port (never the shared default 9464).
        port_option = "--metrics-port" if command == "worker" else "--port"
        args = [port_option, str(self.port)]
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatbuffer", command, *args],
                env=env,
                cwd=cwd,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> httpx2.Response:
        """Poll ``/readyz`` until it answers 200; fail if the process exits first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx2.Client(trust_env=False, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"chatbuffer exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    response = client.get(f"{self.url}/readyz")
                    if response.status_code == 200:
                        return response
                except httpx2.HTTPError:
                    pass
                time.sleep(0.05)
        pytest.fail(f"chatbuffer did not become ready in {READY_TIMEOUT_S} s:\n{self.output()}")

    def wait_for_log(self, text: str) -> None:
        """Poll the process's output until it contains ``text``."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                pytest.fail(f"chatbuffer exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"{text!r} did not appear in {READY_TIMEOUT_S} s:\n{self.output()}")

    def terminate(self) -> int:
        """SIGTERM; the exit code, or a failure if it takes longer than ``STOP_TIMEOUT_S``."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chatbuffer did not stop within {STOP_TIMEOUT_S} s:\n{self.output()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts; any still running at the end are killed."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """A brand-new, unmigrated PostgreSQL database, dropped afterwards."""
    with scratch_postgres("cli") as scratch:
        yield scratch.url


def sqlite_revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return str(revision)


# -- migrate --------------------------------------------------------------------------------


def test_migrate_creates_a_fresh_sqlite_database_and_can_run_again(tmp_path: Path) -> None:
    path = tmp_path / "data" / "new" / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}")
    expected = f"chatbuffer: database schema is at revision {HEAD}"

    first = chatbuffer("migrate", env=env, cwd=tmp_path)
    second = chatbuffer("migrate", env=env, cwd=tmp_path)

    for result in (first, second):
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().splitlines()[-1] == expected
        assert "Traceback" not in result.stderr
    assert sqlite_revision(path) == HEAD


def test_migrate_to_rolls_the_schema_back_and_a_worker_then_asks_for_migrate(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}", **WORKER_SETTINGS)
    assert chatbuffer("migrate", env=env, cwd=tmp_path).returncode == 0

    down = chatbuffer("migrate", "--to", "0007", env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.strip() == "chatbuffer: database schema is at revision 0007"
    assert sqlite_revision(path) == "0007"
    assert_refused(
        chatbuffer("worker", env=env, cwd=tmp_path), "schema is at 0007", "run `chatbuffer migrate`"
    )

    up = chatbuffer("migrate", "--to", HEAD or "", env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert sqlite_revision(path) == HEAD


def test_migrate_to_an_unknown_revision_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}")
    assert chatbuffer("migrate", env=env, cwd=tmp_path).returncode == 0

    assert_refused(
        chatbuffer("migrate", "--to", "0042", env=env, cwd=tmp_path),
        "unknown revision '0042'",
        "base, 0001",
    )
    assert sqlite_revision(path) == HEAD


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"MESSAGE_BUFFER_DURATION_MS": "abc"}, "MESSAGE_BUFFER_DURATION_MS"),
        ({"MESSAGE_BUFFER_DURATION_MS": "60000", "MAX_BUFFER_AGE_MS": "1000"}, "MAX_BUFFER_AGE_MS"),
        ({"OPENAI_API_KEY": ""}, "OPENAI_API_KEY"),
        ({"CHATWOOT_API_TOKEN": ""}, "CHATWOOT_API_TOKEN"),
        ({"DATABASE_URL": "mysql://db/chatbuffer"}, "DATABASE_URL"),
        ({"BOT_ACTIVE_STATUSES": "archived"}, "BOT_ACTIVE_STATUSES"),
        ({"CHATWOOT_BASE_URL": "chatwoot.example.com"}, "CHATWOOT_BASE_URL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"TRANSCRIPTION_BACKEND": "whisper"}, "TRANSCRIPTION_BACKEND"),
        ({"BURST_WEBHOOK_URL": "http://127.0.0.1:1/bursts"}, "BURST_WEBHOOK_SECRET"),
        ({"BURST_WEBHOOK_URL": "agent.example.com/bursts"}, "BURST_WEBHOOK_URL"),
    ],
    ids=[
        "duration-not-a-number",
        "max-age-below-duration",
        "no-openai-key",
        "no-chatwoot-token",
        "unsupported-database",
        "unknown-status",
        "base-url-without-scheme",
        "unknown-log-level",
        "unknown-transcription-backend",
        "burst-webhook-without-secret",
        "burst-webhook-without-scheme",
    ],
)
def test_serve_with_a_bad_setting_names_it_in_one_line(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    path = tmp_path / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}", **WORKER_SETTINGS)
    env.update(settings)
    env = {k: v for k, v in env.items() if v != ""}  # "" means: leave the setting out

    result = chatbuffer("serve", "--port", str(free_port()), env=env, cwd=tmp_path)

    assert_refused(result, named)
    assert not path.exists(), "a refused start must not create the database"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_local_transcription_that_cannot_run_here_is_refused_in_one_line(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "chatbuffer.db"
    env = clean_env(
        DATABASE_URL=f"sqlite:///{path}", TRANSCRIPTION_BACKEND="local", **WORKER_SETTINGS
    )
    if importlib.util.find_spec("faster_whisper") is None:
        named = ["TRANSCRIPTION_BACKEND=local needs", "chatbuffer[local-asr]"]
    else:  # with the extra installed, a model directory that holds no model stops it instead
        env["TRANSCRIPTION_MODEL"] = str(tmp_path)
        named = ["TRANSCRIPTION_MODEL is invalid", str(tmp_path)]
    args = ["--port", str(free_port())] if command == "serve" else []

    result = chatbuffer(command, *args, env=env, cwd=tmp_path)

    assert_refused(result, *named)
    assert not path.exists(), "a refused start must not create the database"


# -- databases ------------------------------------------------------------------------------


def test_serve_refuses_an_unmigrated_postgres_until_migrate_runs(
    tmp_path: Path, empty_postgres: str, servers: list[Server]
) -> None:
    env = clean_env(DATABASE_URL=empty_postgres, **WORKER_SETTINGS)

    for command in ("serve", "api", "worker"):
        refused = chatbuffer(command, env=env, cwd=tmp_path)
        # One line is the promise; test_an_unmigrated_database_is_refused_in_one_line holds it.
        assert_refused(refused, "run `chatbuffer migrate`", one_line=False)

    migrated = chatbuffer("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert migrated.stdout.strip().splitlines()[-1] == (
        f"chatbuffer: database schema is at revision {HEAD}"
    )

    api = Server("api", clean_env(DATABASE_URL=empty_postgres), tmp_path)
    servers.append(api)
    ready = api.wait_ready()
    assert ready.json() == {"status": "ready", "database": "ok"}
    api.terminate()  # its exit code: test_sigterm_stops_the_process_with_exit_0
    assert "Application shutdown complete" in api.output()
    assert "Traceback" not in api.output()


def test_serve_migrates_a_fresh_sqlite_database_and_becomes_ready(
    tmp_path: Path, servers: list[Server]
) -> None:
    path = tmp_path / "state" / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}", **WORKER_SETTINGS)

    serve = Server("serve", env, tmp_path)
    servers.append(serve)
    ready = serve.wait_ready()

    assert ready.json() == {"status": "ready", "database": "ok"}
    assert sqlite_revision(path) == HEAD
    with httpx2.Client(trust_env=False) as client:
        assert client.get(f"{serve.url}/healthz").json() == {"status": "ok"}
    serve.terminate()  # its exit code: test_sigterm_stops_the_process_with_exit_0
    assert "Application shutdown complete" in serve.output()
    assert "Traceback" not in serve.output()


@pytest.mark.parametrize("command", ["serve", "api", "worker"])
def test_sigterm_stops_the_process_with_exit_0(
    tmp_path: Path, sqlite_template: Path, servers: list[Server], command: str
) -> None:
    path = tmp_path / "chatbuffer.db"
    shutil.copy(sqlite_template, path)
    server = Server(
        command, clean_env(DATABASE_URL=f"sqlite:///{path}", **WORKER_SETTINGS), tmp_path
    )
    servers.append(server)
    if command == "worker":
        server.wait_for_log(" started (concurrency ")
    else:
        server.wait_ready()

    code = server.terminate()

    assert code == 0, f"exit code {code}:\n{server.output()}"
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("command", ["api", "worker"])
def test_an_unmigrated_database_is_refused_in_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "chatbuffer.db"
    sqlite3.connect(path).close()  # exists, holds no schema (serve would migrate it)
    env = clean_env(DATABASE_URL=f"sqlite:///{path}", **WORKER_SETTINGS)

    result = chatbuffer(command, env=env, cwd=tmp_path)

    assert_refused(result, "run `chatbuffer migrate`")


@pytest.mark.parametrize("command", ["migrate", "api", "serve", "worker"])
def test_an_unreachable_postgres_is_one_line_without_the_password(
    tmp_path: Path, command: str
) -> None:
    env = clean_env(DATABASE_URL=UNREACHABLE_PG, **WORKER_SETTINGS)

    result = chatbuffer(command, env=env, cwd=tmp_path)

    assert UNREACHABLE_PASSWORD not in result.stdout + result.stderr
    assert_refused(result, "DATABASE_URL")


def test_serve_on_an_unusable_sqlite_path_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    env = clean_env(DATABASE_URL=f"sqlite:///{blocker / 'chatbuffer.db'}", **WORKER_SETTINGS)

    result = chatbuffer("serve", env=env, cwd=tmp_path)

    assert_refused(result, "DATABASE_URL")


# -- purge ----------------------------------------------------------------------------------


def _store_buffer(path: Path, status: str, updated_at: str, conversation: int) -> None:
    """A buffer with one message and its job, as the service leaves them."""
    buffer_id = uuid.uuid4().hex
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO conversations (id, account_id, chatwoot_conversation_id) "
            "VALUES (?, 1, ?)",
            (uuid.uuid4().hex, conversation),
        )
        conn.execute(
            "INSERT INTO message_buffer (id, account_id, conversation_id, buffer_start_time, "
            "last_message_time, status, message_count, updated_at) "
            "VALUES (?, 1, ?, ?, ?, ?, 1, ?)",
            (buffer_id, conversation, updated_at, updated_at, status, updated_at),
        )
        conn.execute(
            "INSERT INTO buffer_processing_jobs (id, buffer_id, account_id, conversation_id, "
            "scheduled_for, status) VALUES (?, ?, 1, ?, ?, 'completed')",
            (uuid.uuid4().hex, buffer_id, conversation, updated_at),
        )
        conn.execute(
            "INSERT INTO buffered_messages (id, buffer_id, account_id, conversation_id, "
            "chatwoot_message_id, content, message_type, sender_info, conversation_info, "
            "received_at) VALUES (?, ?, 1, ?, ?, 'personal', 'incoming', '{}', '{}', ?)",
            (uuid.uuid4().hex, buffer_id, conversation, conversation, updated_at),
        )


def _statuses(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT status FROM message_buffer"))


def test_purge_reports_then_deletes_only_old_finished_buffers(tmp_path: Path) -> None:
    path = tmp_path / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}", DATA_RETENTION_DAYS="30")
    assert chatbuffer("migrate", env=env, cwd=tmp_path).returncode == 0
    _store_buffer(path, "completed", "2020-01-01 00:00:00.000000", 1)
    _store_buffer(path, "active", "2020-01-01 00:00:00.000000", 2)
    _store_buffer(path, "completed", "2999-01-01 00:00:00.000000", 3)

    preview = chatbuffer("purge", "--dry-run", env=env, cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert "would delete 1 finished buffers" in preview.stdout
    assert "1 messages, 1 jobs and 0 bot replies (dry run" in preview.stdout
    assert _statuses(path) == ["active", "completed", "completed"]

    done = chatbuffer("purge", "--older-than", "12h", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("chatbuffer: deleted 1 finished buffers"), done.stdout
    assert _statuses(path) == ["active", "completed"]


def test_a_worker_with_a_retention_period_purges_by_itself(
    tmp_path: Path, servers: list[Server]
) -> None:
    path = tmp_path / "chatbuffer.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{path}", DATA_RETENTION_DAYS="30", **WORKER_SETTINGS)
    assert chatbuffer("migrate", env=env, cwd=tmp_path).returncode == 0
    _store_buffer(path, "completed", "2020-01-01 00:00:00.000000", 1)
    _store_buffer(path, "cancelled", "2999-01-01 00:00:00.000000", 2)

    server = Server("serve", env, tmp_path)
    servers.append(server)
    server.wait_ready()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _statuses(path) != ["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.1)

    assert _statuses(path) == ["cancelled"], server.output()
    assert server.terminate() == 0
    assert "personal" not in server.output()


def test_purge_without_an_age_says_how_to_give_one(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'chatbuffer.db'}")

    result = chatbuffer("purge", env=env, cwd=tmp_path)

    assert_refused(result, "--older-than", "DATA_RETENTION_DAYS")


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "garbage"],
        ["serve", "--port", "garbage"],
        ["api", "--port", "0"],
        ["serve", "--port", "65536"],
        ["frobnicate"],
        [],
        ["demo", "--window-ms", "10"],
        ["migrate", "--force"],
        ["purge", "--older-than", "3x"],
        ["purge", "--older-than", "0d"],
    ],
    ids=[
        "port-before-command",
        "port-not-a-number",
        "port-zero",
        "port-too-high",
        "unknown-command",
        "no-command",
        "window-too-short",
        "unknown-option",
        "purge-age-not-a-duration",
        "purge-age-zero",
    ],
)
def test_a_usage_error_exits_2_with_usage(tmp_path: Path, args: Sequence[str]) -> None:
    result = chatbuffer(*args, env=clean_env(), cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("usage: chatbuffer"), result.stderr
    assert re.search(r"^chatbuffer( \w+)?: error: ", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "a usage error must not touch the disk"


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = chatbuffer("--help", env=clean_env(), cwd=tmp_path)

    assert result.returncode == 0
    for command in ("serve", "api", "worker", "migrate", "purge", "demo", "prompt"):
        assert command in result.stdout


# -- demo -----------------------------------------------------------------------------------


def test_demo_shows_one_reply_for_the_burst(tmp_path: Path) -> None:
    result = chatbuffer("demo", "--window-ms", "1000", env=clean_env(), cwd=tmp_path, timeout=90)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert result.stdout.count("The reply:") == 1, output
    assert result.stdout.count("reply sent to Chatwoot") == 1, output
    assert "Chatwoot received 1 reply for 4 messages" in result.stdout, output
    reply = result.stdout.split("The reply:\n", 1)[1].strip()
    assert reply, output
    assert list(tmp_path.iterdir()) == [], "the demo keeps its database in a temporary folder"
