"""``GET /metrics`` scraped over HTTP from real processes, and their JSON logs: a burst through
``serve`` (both databases), and through ``api`` plus ``worker`` (PostgreSQL), each answered once,
must show up as the samples an operator's dashboard reads."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatbuffer.simulator import payloads
from tests.conftest import _empty_postgres
from tests.e2e.conftest import (
    ACCOUNT,
    REPLY_BOUND_S,
    Service,
    Worker,
    World,
    free_port,
    simulators,
)

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: Words that must never reach an INFO log line.
PRIVATE = "my tracking code ZX-88213 shows nothing since Tuesday"
BUFFER_LOG_FIELDS = {
    "bufferId",
    "conversationId",
    "userId",
    "messageCount",
    "bufferDuration",
    "processingTime",
    "aiConfidence",
    "responseGenerated",
    "timestamp",
}


async def scrape(url: str) -> Samples:
    async with httpx2.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def burst(world: World, conversation: int) -> None:
    """Three messages from the contact, one ignored delivery and one refused (unsigned) one."""
    for text in ("hello", PRIVATE, "can you check?"):
        await world.say(conversation, text)
    resolved = payloads.incoming_text(
        account_id=ACCOUNT,
        conversation_id=conversation + 1,
        message_id=world.next_message_id + 100,
        content="thanks, all good",
        created_at=datetime(2026, 8, 14, 10, 0, tzinfo=UTC),
        status="resolved",
    )
    assert await world.deliver(resolved) == 200
    async with httpx2.AsyncClient(trust_env=False) as client:
        unsigned = await client.post(
            f"{world.service.url}/webhooks/chatwoot", json=resolved, timeout=5
        )
    assert unsigned.status_code == 401
    replies = await world.wait_for_replies(conversation, 1, REPLY_BOUND_S)
    assert len(replies) == 1


def assert_burst_answered_once(worker_side: Samples) -> None:
    assert value(worker_side, "chatbuffer_buffers_closed_total", reason="quiet") == 1
    assert value(worker_side, "chatbuffer_buffer_messages_sum") == 3
    assert value(worker_side, "chatbuffer_replies_sent_total") == 1
    assert value(worker_side, "chatbuffer_llm_request_duration_seconds_count", outcome="ok") == 1
    assert value(worker_side, "chatbuffer_processing_lateness_seconds_count") == 1
    # Closed by the 1 s quiet period and taken at once: the lateness is far below a second.
    assert value(worker_side, "chatbuffer_processing_lateness_seconds_sum") < 1
    assert value(worker_side, "chatbuffer_llm_confidence_count") == 1
    assert value(worker_side, "chatbuffer_answer_delay_seconds_count") == 1
    assert value(worker_side, "chatbuffer_answer_delay_seconds_sum") < REPLY_BOUND_S
    assert 0 < value(worker_side, "chatbuffer_llm_confidence_sum") <= 1
    assert value(worker_side, "chatbuffer_llm_tokens_total", kind="prompt") > 0
    assert value(worker_side, "chatbuffer_llm_tokens_total", kind="completion") > 0
    assert (
        value(
            worker_side,
            "chatbuffer_chatwoot_request_duration_seconds_count",
            endpoint="create_message",
            status="ok",
        )
        == 1
    )
    assert value(worker_side, "chatbuffer_dead_letters_total") == 0


def assert_deliveries_counted(api_side: Samples) -> None:
    received = "chatbuffer_messages_received_total"
    assert value(api_side, received, outcome="buffered") == 3
    assert value(api_side, received, outcome="ignored_conversation_not_active") == 1
    assert value(api_side, received, outcome="rejected") == 1
    assert value(api_side, "chatbuffer_db_statement_duration_seconds_count", operation="ping") > 0


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    lines = log.read_text().splitlines()
    assert lines
    parsed = []
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


async def test_serve_reports_a_burst_in_metrics_and_json_logs(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(db_url, LOG_FORMAT="json", LOG_LEVEL="info")
        service = Service(env=env, port=port, log=tmp_path / "serve.log")
        await service.start()
        try:
            world = sims.world(service)
            await burst(world, 4100)
            await asyncio.sleep(0.3)  # the outcome is recorded just after the POST
            samples = await scrape(f"{service.url}/metrics")
        finally:
            await service.stop()

    assert_deliveries_counted(samples)
    assert_burst_answered_once(samples)
    assert len(sims.model.requests) == 1
    assert value(samples, "chatbuffer_open_buffers") == 0

    entries = json_lines(service.log)
    processed = [e for e in entries if e["message"] == "buffer_processed"]
    assert len(processed) == 1, processed
    line = processed[0]
    assert set(line) >= BUFFER_LOG_FIELDS
    assert line["conversationId"] == 4100
    assert line["messageCount"] == 3
    assert line["responseGenerated"] is True
    assert line["outcome"] == "replied"
    assert 0 < line["aiConfidence"] <= 1
    assert 1000 <= line["bufferDuration"] < 1000 + REPLY_BOUND_S * 1000
    ignored = [e for e in entries if e["message"] == "webhook_ignored"]
    # The resolved conversation's message, and Chatwoot's echo of the bot's own reply.
    assert sorted((e["reason"], e["conversation_id"], e["outcome"]) for e in ignored) == [
        ("conversation is resolved", 4101, "ignored_conversation_not_active"),
        ("the bot's own reply", 4100, "ignored_own_reply"),
    ]
    assert any(e["logger"].startswith("uvicorn") for e in entries), "uvicorn's lines are JSON too"
    assert PRIVATE not in service.log.read_text()


@pytest.mark.postgres
async def test_api_and_worker_each_serve_their_metrics(postgres_url: str, tmp_path: Path) -> None:
    _empty_postgres(postgres_url)
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(postgres_url)
        api = Service(env=env, port=port, log=tmp_path / "api.log", command="api")
        worker = Worker(env, tmp_path / "worker.log")
        await asyncio.gather(api.start(), worker.start())
        try:
            world = sims.world(api)
            await burst(world, 4200)
            await asyncio.sleep(0.3)
            api_side = await scrape(f"{api.url}/metrics")
            worker_side = await scrape(worker.metrics_url)
            async with httpx2.AsyncClient(trust_env=False) as client:
                health = await client.get(worker.metrics_url.replace("/metrics", "/healthz"))
        finally:
            code = await worker.stop()
            await api.stop()

    assert code == 0
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert_deliveries_counted(api_side)
    assert_burst_answered_once(worker_side)
    # Each process counts what it did: the api posted nothing, the worker took no delivery.
    assert value(api_side, "chatbuffer_replies_sent_total") == 0
    assert value(worker_side, "chatbuffer_messages_received_total", outcome="buffered") == 0
    # The gauges are the database's: both processes see the same numbers.
    for gauge in ("chatbuffer_open_buffers", "chatbuffer_due_buffers"):
        assert value(api_side, gauge) == value(worker_side, gauge) == 0
    processed = worker.log_lines("buffer_processed")
    assert len(processed) == 1, processed
    assert "messageCount=3" in processed[0]
    assert "responseGenerated=True" in processed[0]
