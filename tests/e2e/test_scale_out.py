"""Separate ``api`` and ``worker`` processes over one PostgreSQL: the wake-up crosses processes,
and a crowd of simultaneous bursts spread over two of each is answered once per burst."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, func, select

from chatbuffer.simulator import payloads
from chatbuffer.storage import database
from chatbuffer.storage.tables import (
    bot_replies,
    buffer_processing_jobs,
    buffered_messages,
    message_buffer,
)
from tests.conftest import _empty_postgres
from tests.e2e.conftest import (
    ACCOUNT,
    REPLY_BOUND_S,
    SECRET,
    Service,
    Simulators,
    Worker,
    free_port,
    simulators,
)

# Four service processes under load each: alone on the machine, after the parallel pass.
pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.serial]


@dataclass
class Fleet:
    apis: list[Service]
    workers: list[Worker]


@asynccontextmanager
async def fleet(env: dict[str, str], ports: list[int], tmp_path: Path) -> AsyncIterator[Fleet]:
    """One ``api`` process per port and two workers; every process ends with the block and the
    workers must shut down cleanly."""
    apis = [
        Service(env=env, port=port, log=tmp_path / f"api{port}.log", command="api")
        for port in ports
    ]
    workers = [Worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
    codes: list[int | None] = []

    async def stop_worker(worker: Worker) -> None:
        codes.append(await worker.stop())

    # Every process is stopped even when starting, the test or another stop fails; the workers
    # first, while the simulators they may still be calling are up.
    async with AsyncExitStack() as stack:
        for api in apis:
            stack.push_async_callback(api.stop)
        for worker in workers:
            stack.push_async_callback(stop_worker, worker)
        # Started together: each process spends seconds importing, so one after the other
        # would dominate the test's run time.
        async with asyncio.TaskGroup() as group:
            for start in [api.start for api in apis] + [worker.start for worker in workers]:
                group.create_task(start())
        yield Fleet(apis, workers)
    assert codes == [0, 0], [worker.log.read_text()[-2000:] for worker in workers]


async def test_api_and_worker_processes_answer_within_the_window(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_postgres(postgres_url)
    ports = [free_port(), free_port()]
    async with simulators(ports[0]) as sims:
        # A long sweep: only the cross-process NOTIFY can make the reply arrive in time.
        env = sims.service_env(postgres_url, BUFFER_PROCESSING_INTERVAL_MS="60000")
        async with fleet(env, ports, tmp_path) as processes:
            await _burst_through_both_apis(sims, processes.apis)


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


CROWD = 300
BURST = 3
CROWD_WINDOW_MS = 2000
CROWD_WINDOW_S = CROWD_WINDOW_MS / 1000
#: Only a hang fails the test; speed is measured and printed, not asserted.
CROWD_BOUND_S = CROWD_WINDOW_S + 30
#: Conversations whose bursts are in flight at once: 24 webhooks over both API processes.
SENDING_CONVERSATIONS = 8
# Four digits, so the scripted model names each conversation's "order" in its reply.
FIRST_CONVERSATION = 7000


def _lines(conversation: int) -> list[str]:
    return [f"order {conversation} line {i}" for i in range(1, BURST + 1)]


def _conversation_of(burst: list[str]) -> int:
    return int(burst[0].split()[1])


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@dataclass
class Crowd:
    statuses: Counter[int | str]
    #: Seconds from a burst's first request to its last answer, per conversation.
    burst_s: dict[int, float]

    def slow(self) -> set[int]:
        """Conversations whose burst was not all stored within the window of its first message.

        Only these may legitimately be answered in two steps: part of the burst went due (and
        maybe to the model) before the rest arrived, and was then folded into the rest.
        """
        return {c for c, took in self.burst_s.items() if took >= CROWD_WINDOW_S}


async def test_300_conversations_bursting_at_once_get_exactly_one_reply_each(
    postgres_url: str, tmp_path: Path
) -> None:
    """Nothing is lost, duplicated or split by two APIs and two workers racing on one database;
    the speed is only printed (for docs/reliability.md)."""
    _empty_postgres(postgres_url)
    ports = [free_port(), free_port()]
    conversations = range(FIRST_CONVERSATION, FIRST_CONVERSATION + CROWD)
    async with simulators(ports[0]) as sims:
        env = sims.service_env(
            postgres_url,
            MESSAGE_BUFFER_DURATION_MS=str(CROWD_WINDOW_MS),
        )
        # Chatwoot's echo of every reply goes to the first API, which confirms the send with it.
        async with fleet(env, ports, tmp_path) as processes:
            world = sims.world(processes.apis[0])
            started = time.monotonic()
            crowd = await _send_crowd(processes.apis, conversations)
            last_webhook = time.monotonic()

            def answered() -> int:
                return sum(len(world.replies(c)) for c in conversations)

            done = await world.wait_for(lambda: answered() >= CROWD, CROWD_BOUND_S)
            last_reply = time.monotonic()
            # Room for a late duplicate to show up before counting.
            await asyncio.sleep(1)
            stored = _stored(postgres_url)
            per_worker = [len(w.log_lines("reply_sent")) for w in processes.workers]
            claim_ms = [
                float(m)
                for w in processes.workers
                for line in w.log_lines("buffer_closed")
                for m in re.findall(r"lateness_ms=(\S+)", line)
            ]
            reply_s = stored.reply_s
            # Printed before the checks, so a failing run still reports what it measured.
            print(
                f"\nscale-out {CROWD} conversations x {BURST} messages, 2 api + 2 workers, "
                f"window {CROWD_WINDOW_MS} ms: {CROWD * BURST} webhooks in "
                f"{last_webhook - started:.2f} s (burst stored p50 "
                f"{_percentile(list(crowd.burst_s.values()), 50) * 1000:.0f} ms, max "
                f"{max(crowd.burst_s.values()) * 1000:.0f} ms, {len(crowd.slow())} over the "
                f"window); last webhook -> last reply {last_reply - last_webhook:.2f} s; "
                f"total {last_reply - started:.2f} s; replies per worker {per_worker}; "
                f"due -> claimed p50 {_percentile(claim_ms, 50):.0f} ms, "
                f"p99 {_percentile(claim_ms, 99):.0f} ms; "
                f"due -> reply posted p50 {_percentile(reply_s, 50) * 1000:.0f} ms, "
                f"p99 {_percentile(reply_s, 99) * 1000:.0f} ms, "
                f"max {max(reply_s, default=0) * 1000:.0f} ms"
            )

            assert crowd.statuses == Counter({200: CROWD * BURST}), crowd.statuses
            assert done, f"{answered()} of {CROWD} replies within {CROWD_BOUND_S} s"
            replies = {c: world.replies(c) for c in conversations}
            assert {c: len(r) for c, r in replies.items() if len(r) != 1} == {}
            for conversation, [reply] in replies.items():
                assert "Thanks for your 3 messages" in reply["content"]
                assert f"#{conversation}" in reply["content"]
            buffer_ids = {
                r[0]["content_attributes"]["chatbuffer"]["buffer_id"] for r in replies.values()
            }
            assert len(buffer_ids) == CROWD

            # Each conversation's whole burst reached the model in one prompt, in Chatwoot's
            # order; a second call only where the burst itself outlasted the window.
            calls: dict[int, list[list[str]]] = {}
            for prompt in world.prompts():
                burst = world.burst_lines(prompt)
                calls.setdefault(_conversation_of(burst), []).append(burst)
            assert {c: b[-1] for c, b in calls.items()} == {c: _lines(c) for c in conversations}
            assert {c for c, b in calls.items() if len(b) > 1} <= crowd.slow()

            assert stored.messages == CROWD * BURST
            assert set(stored.buffer_statuses) <= {"completed", "superseded"}, stored
            assert stored.completed == buffer_ids
            assert {stored.sizes[b] for b in stored.completed} == {BURST}
            assert set(stored.superseded.values()) <= crowd.slow()
            assert stored.job_statuses == Counter(completed=CROWD + len(stored.superseded))
            assert sorted(stored.replies) == sorted((b, "reply") for b in buffer_ids)
            assert set(stored.unposted) <= set(stored.superseded), stored.unposted

            # Each reply_sent line names its buffer: both workers answered, and none twice.
            sent = [
                buffer_id
                for w in processes.workers
                for line in w.log_lines("reply_sent")
                for buffer_id in re.findall(r"buffer_id=(\S+)", line)
            ]
            assert sorted(sent) == sorted(buffer_ids)
            assert all(n > 0 for n in per_worker), per_worker


async def _send_crowd(apis: list[Service], conversations: range) -> Crowd:
    """Every conversation sends its burst at once, all conversations together.

    A burst's webhooks are in flight together and split over the API processes, as Chatwoot's
    parallel delivery jobs would send them: they may arrive out of order, and the service orders
    a burst by Chatwoot's message id. Sending them one after the other instead would let a slow
    delivery under load open a pause longer than the window inside a burst.
    """
    gate = asyncio.Semaphore(SENDING_CONVERSATIONS)
    crowd = Crowd(Counter(), {})
    message_ids = itertools.count(900_000)

    async def deliver(client: httpx2.AsyncClient, api: Service, body: bytes) -> None:
        headers = payloads.sign(SECRET, body, int(time.time()))
        try:
            response = await client.post(
                f"{api.url}/webhooks/chatwoot", content=body, headers=headers
            )
        except httpx2.HTTPError as exc:
            crowd.statuses[type(exc).__name__] += 1
        else:
            crowd.statuses[response.status_code] += 1

    async def burst(client: httpx2.AsyncClient, conversation: int) -> None:
        async with gate:
            began = time.monotonic()
            async with asyncio.TaskGroup() as messages:
                for i, text in enumerate(_lines(conversation)):
                    body = payloads.incoming_text(
                        account_id=ACCOUNT,
                        conversation_id=conversation,
                        contact_id=conversation,
                        message_id=next(message_ids),
                        content=text,
                        created_at=datetime.now(UTC),
                    )
                    # Compact, as Chatwoot's to_json sends it.
                    encoded = json.dumps(body, separators=(",", ":")).encode()
                    api = apis[(conversation + i) % len(apis)]
                    messages.create_task(deliver(client, api, encoded))
            crowd.burst_s[conversation] = time.monotonic() - began

    async with (
        httpx2.AsyncClient(trust_env=False, timeout=30) as client,
        asyncio.TaskGroup() as group,
    ):
        for conversation in conversations:
            group.create_task(burst(client, conversation))
    return crowd


@dataclass
class Stored:
    messages: int
    buffer_statuses: Counter[str]
    #: Buffers answered, and the messages each ended up holding.
    completed: set[str]
    sizes: Counter[str]
    #: Buffers folded into a newer one of their conversation, with that conversation.
    superseded: dict[str, int]
    job_statuses: Counter[str]
    #: Due time -> job completed (the reply posted), per answered buffer.
    reply_s: list[float]
    #: Sends posted to Chatwoot (the ledger rows that carry Chatwoot's message id).
    replies: list[tuple[str, str]]
    #: Intents recorded but never posted: a reply reserved while a newer buffer waited, whose
    #: burst was then folded into that newer buffer.
    unposted: list[str]


def _stored(url: str) -> Stored:
    engine = create_engine(database.sync_url(url))
    try:
        with engine.connect() as conn:
            buffers = conn.execute(
                select(
                    message_buffer.c.id, message_buffer.c.conversation_id, message_buffer.c.status
                )
            ).all()
            sizes = conn.execute(
                select(buffered_messages.c.buffer_id, func.count()).group_by(
                    buffered_messages.c.buffer_id
                )
            ).all()
            jobs = conn.execute(
                select(
                    buffer_processing_jobs.c.buffer_id,
                    buffer_processing_jobs.c.status,
                    buffer_processing_jobs.c.scheduled_for,
                    buffer_processing_jobs.c.processed_at,
                )
            ).all()
            posted = conn.execute(
                select(
                    bot_replies.c.buffer_id,
                    bot_replies.c.kind,
                    bot_replies.c.chatwoot_message_id,
                )
            ).all()
    finally:
        engine.dispose()
    completed = {str(b.id) for b in buffers if b.status == "completed"}
    return Stored(
        messages=sum(count for _, count in sizes),
        buffer_statuses=Counter(b.status for b in buffers),
        completed=completed,
        sizes=Counter({str(buffer_id): count for buffer_id, count in sizes}),
        superseded={str(b.id): b.conversation_id for b in buffers if b.status == "superseded"},
        job_statuses=Counter(j.status for j in jobs),
        reply_s=[
            (j.processed_at - j.scheduled_for).total_seconds()
            for j in jobs
            if str(j.buffer_id) in completed
        ],
        replies=[(str(p.buffer_id), p.kind) for p in posted if p.chatwoot_message_id is not None],
        unposted=[str(p.buffer_id) for p in posted if p.chatwoot_message_id is None],
    )
