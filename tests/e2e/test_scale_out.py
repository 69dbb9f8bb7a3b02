"""Separate ``api`` and ``worker`` processes over one PostgreSQL: the wake-up crosses processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _empty_postgres
from tests.e2e.conftest import REPLY_BOUND_S, Service, Simulators, free_port, simulators

pytestmark = pytest.mark.e2e


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatbuffer", "worker"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"chatbuffer worker did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process


async def test_api_and_worker_processes_answer_within_the_window(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_postgres(postgres_url)
    ports = [free_port(), free_port()]
    async with simulators(ports[0]) as sims:
        # A long sweep: only the cross-process NOTIFY can make the reply arrive in time.
        env = sims.service_env(postgres_url, BUFFER_PROCESSING_INTERVAL_MS="60000")
        apis = [
            Service(env=env, port=port, log=tmp_path / f"api{port}.log", command="api")
            for port in ports
        ]
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for api in apis:
                await api.start()
            workers = [start_worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
            await _burst_through_both_apis(sims, apis)
        finally:
            for worker in workers:
                worker.terminate()
                assert worker.wait(timeout=15) == 0
            for api in apis:
                await api.stop()


async def _burst_through_both_apis(sims: Simulators, apis: list[Service]) -> None:
    world = sims.world(apis[0])
    chatwoot, model = sims.chatwoot, sims.model
    # Both API replicas take deliveries; each conversation's burst is split across them.
    for conversation in (101, 102, 103):
        for api in apis:
            chatwoot.webhook_url = f"{api.url}/webhooks/chatwoot"
            await world.say(conversation, f"order {conversation}{api.port % 10} via {api.port}")
    sent_at = time.monotonic()
    for conversation in (101, 102, 103):
        replies = await world.wait_for_replies(conversation, 1, REPLY_BOUND_S)
        assert len(replies) == 1, f"conversation {conversation}: {replies}"
    assert time.monotonic() - sent_at <= REPLY_BOUND_S
    await asyncio.sleep(0.5)
    assert sorted(len(world.replies(c)) for c in (101, 102, 103)) == [1, 1, 1]
    assert len(model.requests) == 3
    for prompt in world.prompts():
        assert len(world.burst_lines(prompt)) == 2
