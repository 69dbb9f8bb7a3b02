"""End-to-end harness: the real ``chatbuffer serve`` process between two simulators.

The Chatwoot simulator validates every request the service makes against Chatwoot's own
OpenAPI spec and delivers signed webhooks; the model simulator speaks the OpenAI API. All traffic
is real HTTP on 127.0.0.1. These tests wait on the real clock, with a 1 s quiet period.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from chatbuffer.simulator import payloads
from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.model import Script, ScriptedModelServer
from chatbuffer.simulator.server import serve_in_background
from tests.support.swagger import load_validator

WINDOW_MS = 1000
#: The generous bound the brief allows: a reply within the window plus 2 s.
REPLY_BOUND_S = WINDOW_MS / 1000 + 2
TOKEN = "e2e-chatwoot-token"
SECRET = "e2e-webhook-secret"
ACCOUNT = 1

pytestmark = pytest.mark.e2e

_E2E_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end tests run on PostgreSQL, the production database, unless marked
    ``both_databases`` (the buffering core: test_service, test_caps), which also run on SQLite.

    What a feature stores is checked on both databases by the integration tests; running every
    feature's real-process test twice would double the slowest tier for no new failure mode.
    """
    dropped = []
    kept = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_sqlite = callspec is not None and callspec.params.get("db_url") == "sqlite"
        if (
            on_sqlite
            and item.path.is_relative_to(_E2E_DIR)
            and item.get_closest_marker("both_databases") is None
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Service:
    """One ``chatbuffer serve`` process; can be killed and started again on the same port."""

    env: dict[str, str]
    port: int
    log: Path
    command: str = "serve"
    process: subprocess.Popen[bytes] | None = None
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatbuffer", self.command, "--port", str(self.port)],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        deadline = time.monotonic() + 30
        async with httpx2.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"chatbuffer exited:\n{self.log.read_text()}")
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx2.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"chatbuffer did not become ready:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def terminate(self) -> int:
        """SIGTERM, and the exit code once the process has shut down.

        Waits without blocking the loop: the simulators live in it and the process may still be
        talking to them while it shuts down.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("chatbuffer did not stop within 30 s of SIGTERM")
            await asyncio.sleep(0.02)
        return code

    async def restart(self) -> None:
        await self.terminate()
        await self.start()

    async def stop(self) -> None:
        """End the process whatever state it is in (test teardown), then check that its log
        never showed a secret it was given."""
        if self.process is not None and self.process.poll() is None:
            try:
                await self.terminate()
            except RuntimeError:
                self.process.kill()
                self.process.wait()
        assert_log_free_of(self.log, secrets_of(self.env))

    def assert_log_free_of(self, texts: Sequence[str]) -> None:
        assert_log_free_of(self.log, texts)


@dataclass
class Worker:
    """One ``chatbuffer worker`` process; ``owner`` is the lease-owner name it logged."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    owner: str | None = None
    #: Where its ``/metrics`` and ``/healthz`` answer (a free port, never the default 9464).
    metrics_port: int = field(default_factory=free_port)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chatbuffer",
                    "worker",
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logged = self.log.read_bytes()[offset:].decode(errors="replace")
            found = re.search(r"worker (\S+) started", logged)
            if found:
                self.owner = found[1]
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"chatbuffer worker did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def stop(self) -> int | None:
        """SIGTERM and the exit code (``None`` if it had to be killed), then check that its log
        never showed a secret it was given.

        Waits without blocking the loop: the worker may still be talking to the simulators.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        code: int | None
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                break
            await asyncio.sleep(0.02)
        assert_log_free_of(self.log, secrets_of(self.env))
        return code

    def log_lines(self, event: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if f": {event} " in line]


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def secrets_of(env: dict[str, str]) -> list[str]:
    """The secret values a process was started with (tokens, keys, the database password)."""
    return [
        value
        for name, value in env.items()
        if re.search(r"TOKEN|SECRET|API_KEY|PASSWORD", name) and len(value) >= 6
    ] + list(re.findall(r"://[^:/@]+:([^@/]+)@", env.get("DATABASE_URL", "")))


def assert_log_free_of(log: Path, texts: Sequence[str]) -> None:
    shown = log.read_text(errors="replace") if log.exists() else ""
    leaked = [text for text in texts if text in shown]
    assert not leaked, f"{log.name} shows {len(leaked)} value(s) it must not"


def user_text(request: dict[str, Any]) -> str:
    """The text of a model request's first user message."""
    content = next(m["content"] for m in request["messages"] if m["role"] == "user")
    if isinstance(content, str):
        return content
    return str(content[0]["text"])


@dataclass
class World:
    chatwoot: ChatwootSimulator
    model: ScriptedModelServer
    service: Service
    chatwoot_url: str
    model_url: str
    next_message_id: int = 5000
    said: list[str] = field(default_factory=list)

    async def say(
        self, conversation: int, text: str, *, message_id: int | None = None, **extra: Any
    ) -> int:
        """The contact sends ``text``; Chatwoot delivers the signed webhook."""
        if message_id is None:
            self.next_message_id += 1
            message_id = self.next_message_id
        delivery = await self.chatwoot.send_webhook(
            payloads.incoming_text(
                account_id=ACCOUNT,
                conversation_id=conversation,
                message_id=message_id,
                content=text,
                created_at=datetime.now(UTC),
                **extra,
            )
        )
        assert delivery.status_code == 200, delivery
        self.said.append(text)
        return message_id

    async def deliver(self, body: dict[str, Any]) -> int | None:
        delivery = await self.chatwoot.send_webhook(body)
        return delivery.status_code

    def replies(self, conversation: int) -> list[dict[str, Any]]:
        return self.chatwoot.replies(ACCOUNT, conversation)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        return await wait_until(condition, timeout_s)

    async def wait_for_replies(
        self, conversation: int, count: int, timeout_s: float
    ) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.replies(conversation)) >= count, timeout_s)
        return self.replies(conversation)

    def prompts(self) -> list[str]:
        """The text of each request's first user message (the burst; a repair request and an
        image's parts come after it)."""
        return [user_text(r) for r in self.model.requests]

    @staticmethod
    def burst_lines(prompt: str) -> list[str]:
        section = prompt.split("Combined message content:\n", 1)[1].split("\n\n", 1)[0]
        return [line[2:] for line in section.splitlines() if line.startswith("- ")]


@dataclass
class Simulators:
    """The Chatwoot and model simulators, served on 127.0.0.1."""

    chatwoot: ChatwootSimulator
    model: ScriptedModelServer
    chatwoot_url: str
    model_url: str

    def service_env(self, database_url: str, **overrides: str) -> dict[str, str]:
        """The environment of a chatbuffer process wired to these simulators."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("CHATWOOT_", "OPENAI_", "MESSAGE_BUFFER", "MAX_BUFFER", "DATABASE_URL")
            )
        }
        env.update(
            DATABASE_URL=database_url,
            MESSAGE_BUFFER_DURATION_MS=str(WINDOW_MS),
            OPENAI_BASE_URL=f"{self.model_url}/v1",
            OPENAI_API_KEY="sk-e2e",
            OPENAI_MODEL="scripted",
            CHATWOOT_BASE_URL=self.chatwoot_url,
            CHATWOOT_API_TOKEN=TOKEN,
            CHATWOOT_WEBHOOK_SECRET=SECRET,
            LOG_LEVEL="INFO",
        )
        env.update(overrides)
        return env

    def world(self, service: Service) -> World:
        return World(
            chatwoot=self.chatwoot,
            model=self.model,
            service=service,
            chatwoot_url=self.chatwoot_url,
            model_url=self.model_url,
        )


@asynccontextmanager
async def simulators(
    webhook_port: int,
    *,
    model_script: Script | None = None,
    user_token: bool = False,
    model_api_key: str | None = None,
) -> AsyncIterator[Simulators]:
    """Both simulators; the Chatwoot one validates every request against Chatwoot's spec.

    ``model_script`` replaces the model's default answers (e.g. with invalid JSON);
    ``user_token``: ``TOKEN`` is a user's, which may also list a conversation's messages;
    ``model_api_key``: the only key the model accepts (any, when None).
    """
    model = ScriptedModelServer(script=model_script, api_key=model_api_key)
    chatwoot = ChatwootSimulator(
        api_token=TOKEN,
        validator=load_validator(),
        webhook_url=f"http://127.0.0.1:{webhook_port}/webhooks/chatwoot",
        webhook_secret=SECRET,
        user_token=user_token,
    )
    model_url, stop_model = await serve_in_background(model.app)
    chatwoot_url, stop_chatwoot = await serve_in_background(chatwoot.app)
    try:
        yield Simulators(chatwoot, model, chatwoot_url, model_url)
    finally:
        await stop_chatwoot()
        await stop_model()
    assert chatwoot.violations == [], chatwoot.violations


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """Simulators plus a running service; ``@pytest.mark.lease_ms(n)`` sets its lease."""
    lease = request.node.get_closest_marker("lease_ms")
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(db_url, WORKER_LEASE_MS=str(lease.args[0] if lease else 3000))
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        try:
            yield world
        finally:
            await service.stop()
        # Message text is logged at DEBUG only; these services log at INFO. Short texts
        # ("hi") could match unrelated log words, so only distinctive ones are checked.
        service.assert_log_free_of([text for text in world.said if len(text) >= 12])
