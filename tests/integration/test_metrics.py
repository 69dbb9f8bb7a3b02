"""Metrics and the ``buffer_processed`` log, in-process on both databases: the runtime ``app.py``
wires, webhooks through its intake, its own worker on a fake clock, fakes for Chatwoot and the
model; the samples are read from the page ``GET /metrics`` serves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatbuffer.app import Runtime
from chatbuffer.domain.model import ConversationKey, ModelDecision
from chatbuffer.settings import load_settings
from chatbuffer.simulator import payloads
from chatbuffer.testing import FakeClock, RecordingChatwoot, ScriptedReplyModel

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ACCOUNT = 1
WINDOW_MS = 1000
SECRET_TEXT = "my parcel 4471-XQ never arrived at Rua Augusta"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(page: bytes) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class World:
    runtime: Runtime
    clock: FakeClock
    chatwoot: RecordingChatwoot
    model: ScriptedReplyModel
    next_id: int = 100

    async def say(self, conversation: int, text: str, **where: Any) -> dict[str, Any]:
        self.next_id += 1
        body = payloads.incoming_text(
            account_id=ACCOUNT,
            conversation_id=conversation,
            message_id=self.next_id,
            content=text,
            created_at=self.clock.now(),
            **where,
        )
        return dict(await self.runtime.handle_webhook(body))

    async def samples(self) -> Samples:
        page, content_type = await self.runtime.metrics_page()
        assert content_type.startswith("text/plain")
        return parse(page)

    async def until_processed(self, count: int) -> None:
        """Until ``count`` buffers reached their outcome (sent, handed off, ...)."""
        done = "chatbuffer_buffer_processing_seconds_count"
        for i in range(1000):
            if sample(parse(await self.runtime.metrics.render()), done) >= count:
                return
            if i % 10 == 9:
                # The worker may have computed its sleep before the clock moved: wake it to look.
                self.runtime.waker.poke()
            await asyncio.sleep(0.01)
        raise AssertionError(f"not {count} buffers processed; sent {self.chatwoot.sent}")


def answer(confidence: float) -> ModelDecision:
    return ModelDecision(
        should_respond=True, content="It ships tomorrow.", confidence=confidence, intent="order"
    )


@pytest.fixture
async def world(db_url: str, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    marker = request.node.get_closest_marker("confidence")
    confidence = marker.args[0] if marker else 0.9
    clock = FakeClock(START)
    chatwoot = RecordingChatwoot()
    model = ScriptedReplyModel(lambda _prompt: answer(confidence))
    settings = load_settings(
        database_url=db_url,
        chatwoot_base_url="http://chatwoot.invalid",
        chatwoot_api_token="cw-token-metrics",
        openai_api_key="sk-metrics",
        message_buffer_duration_ms=WINDOW_MS,
        max_buffer_size=3,
        chatwoot_typing_indicator_enabled=False,
    )
    runtime = Runtime(settings, clock=clock, chatwoot=chatwoot, model=model)
    async with runtime.opened(), runtime.worker_running():
        yield World(runtime, clock, chatwoot, model)


async def test_a_burst_is_counted_from_its_messages_to_its_reply(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = await world.say(7, "hi")
    await world.say(7, SECRET_TEXT)
    ignored = await world.say(8, "anyone there?", status="resolved")
    assert first["status"] == "buffered"
    # Not answered (the conversation is resolved), but kept for the history.
    assert ignored["status"] == "kept"
    # Chatwoot delivers the first message again.
    again = payloads.incoming_text(
        account_id=ACCOUNT, conversation_id=7, message_id=101, content="hi", created_at=START
    )
    assert (await world.runtime.handle_webhook(again))["status"] == "duplicate"

    before = await world.samples()
    world.clock.advance(timedelta(milliseconds=WINDOW_MS + 250))
    await world.until_processed(1)
    world.clock.advance(timedelta(seconds=3))  # past the gauges' cache
    after = await world.samples()

    assert sample(before, "chatbuffer_open_buffers") == 1
    assert sample(after, "chatbuffer_open_buffers") == 0
    assert sample(after, "chatbuffer_due_buffers") == 0
    received = "chatbuffer_messages_received_total"
    assert sample(after, received, outcome="buffered") == 2
    assert sample(after, received, outcome="duplicate") == 1
    assert sample(after, received, outcome="ignored_conversation_not_active") == 1
    assert sample(after, "chatbuffer_buffers_closed_total", reason="quiet") == 1
    assert sample(after, "chatbuffer_buffers_closed_total", reason="max_size") == 0
    assert sample(after, "chatbuffer_buffer_messages_count") == 1
    assert sample(after, "chatbuffer_buffer_messages_sum") == 2
    # The burst closed 1 s after its last message, which came with its first.
    assert sample(after, "chatbuffer_buffer_duration_seconds_sum") == pytest.approx(1.0)
    assert sample(after, "chatbuffer_processing_lateness_seconds_count") == 1
    assert sample(after, "chatbuffer_processing_lateness_seconds_sum") == pytest.approx(0.25)
    assert sample(after, "chatbuffer_llm_request_duration_seconds_count", outcome="ok") == 1
    assert sample(after, "chatbuffer_answer_delay_seconds_count") == 1
    assert sample(after, "chatbuffer_llm_confidence_count") == 1
    assert sample(after, "chatbuffer_llm_confidence_sum") == pytest.approx(0.9)
    assert sample(after, "chatbuffer_replies_sent_total") == 1
    assert sample(after, "chatbuffer_handoffs_total", reason="low_confidence") == 0
    assert sample(after, "chatbuffer_dead_letters_total") == 0
    assert (
        sample(
            after,
            "chatbuffer_chatwoot_request_duration_seconds_count",
            endpoint="create_message",
            status="ok",
        )
        == 1
    )
    for operation in ("record_incoming", "claim_due", "load", "reserve_send", "complete"):
        count = "chatbuffer_db_statement_duration_seconds_count"
        assert sample(after, count, operation=operation) >= 1, operation
    assert len(world.model.prompts) == 1
    assert [s.content for s in world.chatwoot.sent] == ["It ships tomorrow."]

    processed = [r for r in caplog.records if r.getMessage() == "buffer_processed"]
    assert len(processed) == 1
    line = vars(processed[0])
    assert line["conversationId"] == 7
    assert line["accountId"] == ACCOUNT
    assert line["userId"] == "77"  # the simulator's contact
    assert line["messageCount"] == 2
    assert line["bufferDuration"] == 1000
    assert line["aiConfidence"] == pytest.approx(0.9)
    assert line["responseGenerated"] is True
    assert line["outcome"] == "replied"
    assert line["processingTime"] >= 0
    assert line["bufferId"] and line["timestamp"]
    ignored_lines = [r for r in caplog.records if r.getMessage() == "webhook_ignored"]
    assert [vars(r)["reason"] for r in ignored_lines] == ["conversation is resolved"]
    assert vars(ignored_lines[0])["conversation_id"] == 8
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not [r for r in info if SECRET_TEXT in str(vars(r))]


async def test_a_full_buffer_closes_by_size(world: World) -> None:
    for text in ("one", "two", "three"):
        await world.say(9, text)
    world.clock.advance(timedelta(milliseconds=10))
    await world.until_processed(1)

    samples = await world.samples()
    assert sample(samples, "chatbuffer_buffers_closed_total", reason="max_size") == 1
    assert sample(samples, "chatbuffer_buffers_closed_total", reason="quiet") == 0
    assert sample(samples, "chatbuffer_buffer_messages_sum") == 3


async def test_a_control_word_closes_its_burst_and_is_counted_as_a_hand_off(
    world: World,
) -> None:
    await world.say(11, "my order never came")
    await world.say(11, "Humano!")
    world.clock.advance(timedelta(milliseconds=10))
    await world.until_processed(1)

    samples = await world.samples()
    assert sample(samples, "chatbuffer_buffers_closed_total", reason="control_word") == 1
    assert sample(samples, "chatbuffer_buffers_closed_total", reason="quiet") == 0
    assert sample(samples, "chatbuffer_handoffs_total", reason="control_word") == 1
    assert sample(samples, "chatbuffer_llm_request_duration_seconds_count") == 0


async def test_a_takeover_counts_a_cancelled_buffer(world: World) -> None:
    await world.say(10, "hello?")
    status = payloads.conversation_status_changed(
        status="resolved", account_id=ACCOUNT, conversation_id=10
    )
    assert (await world.runtime.handle_webhook(status))["status"] == "cancelled"

    samples = await world.samples()
    assert sample(samples, "chatbuffer_buffers_closed_total", reason="cancelled") == 1
    assert sample(samples, "chatbuffer_messages_received_total", outcome="cancelled") == 1


@pytest.mark.confidence(0.4)
async def test_an_unsure_answer_is_a_hand_off_with_its_confidence(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await world.say(11, "can I get a refund?")
    world.clock.advance(timedelta(milliseconds=WINDOW_MS + 10))
    await world.until_processed(1)

    samples = await world.samples()
    assert sample(samples, "chatbuffer_handoffs_total", reason="low_confidence") == 1
    assert sample(samples, "chatbuffer_replies_sent_total") == 0
    assert sample(samples, "chatbuffer_llm_confidence_sum") == pytest.approx(0.4)
    processed = [vars(r) for r in caplog.records if r.getMessage() == "buffer_processed"]
    assert [(p["outcome"], p["responseGenerated"], p["aiConfidence"]) for p in processed] == [
        ("handed_off", False, pytest.approx(0.4))
    ]
    assert ConversationKey(ACCOUNT, 11) == world.chatwoot.sent[0].key
