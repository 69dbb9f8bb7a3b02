"""A buffer's trace on both databases: the runtime's own worker asks the scripted model over real
HTTP, and ``chatbuffer buffers trace`` reads back the messages, how each moved the closing time,
why it closed, the request as sent with the model's raw answer, and the reply posted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbuffer import cli, trace_tool
from chatbuffer.app import Runtime
from chatbuffer.settings import Settings, load_settings
from chatbuffer.simulator import payloads
from chatbuffer.simulator.model import ScriptedModelServer
from chatbuffer.simulator.server import serve_in_background
from chatbuffer.storage.traces import StoredTrace, stored_trace
from chatbuffer.testing import FakeClock, RecordingChatwoot

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ACCOUNT = 1
CONVERSATION = 31
#: The model's text, spacing and all: the trace keeps it exactly.
RAW = (
    '{"shouldRespond": true,   "content": "Order 5521 ships today.",'
    ' "confidence": 0.93, "intent": "order_status", "actions": []}'
)


@dataclass
class World:
    runtime: Runtime
    settings: Settings
    clock: FakeClock
    chatwoot: RecordingChatwoot
    model: ScriptedModelServer


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    model = ScriptedModelServer(script=lambda _messages: RAW)
    url, stop = await serve_in_background(model.app)
    clock = FakeClock(START)
    chatwoot = RecordingChatwoot()
    settings = load_settings(
        database_url=db_url,
        chatwoot_base_url="http://chatwoot.invalid",
        chatwoot_api_token="cw-token-traces",
        openai_base_url=f"{url}/v1",
        openai_api_key="sk-traces",
        openai_model="scripted",
        message_buffer_duration_ms=1000,
        chatwoot_typing_indicator_enabled=False,
    )
    runtime = Runtime(settings, clock=clock, chatwoot=chatwoot)
    try:
        async with runtime.opened(), runtime.worker_running():
            yield World(runtime, settings, clock, chatwoot, model)
    finally:
        await stop()


async def test_a_buffers_turn_is_shown_from_its_messages_to_its_reply(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    for i, text in enumerate(["hi", "where is order 5521?"]):
        body = payloads.incoming_text(
            account_id=ACCOUNT,
            conversation_id=CONVERSATION,
            message_id=700 + i,
            content=text,
            created_at=world.clock.now(),
        )
        answer = await world.runtime.handle_webhook(body)
        buffer_id = uuid.UUID(answer["buffer_id"])
        world.clock.advance(timedelta(milliseconds=400))
    world.clock.advance(timedelta(seconds=1))
    for i in range(1000):
        if world.chatwoot.sent:
            break
        if i % 10 == 9:
            # The worker may have computed its sleep before the clock moved: wake it to look.
            world.runtime.waker.poke()
        await asyncio.sleep(0.01)
    assert len(world.chatwoot.sent) == 1, [vars(r).get("error") for r in caplog.records]
    for _ in range(100):  # the outcome is recorded just after the POST
        shown = trace_tool.document(
            buffer_id,
            await _stored(world, buffer_id),
            world.settings.buffer_policy,
        )
        if shown["status"] == "completed":
            break
        await asyncio.sleep(0.01)

    assert shown["conversation_id"] == CONVERSATION
    assert shown["close_reason"] == "quiet"
    assert [m["chatwoot_message_id"] for m in shown["messages"]] == [700, 701]
    # Each message moved the closing time to 1 s after it.
    assert [(w["message"], w["closes_at"]) for w in shown["window"]] == [
        (700, START + timedelta(seconds=1)),
        (701, START + timedelta(milliseconds=1400)),
    ]
    [request] = shown["model_requests"]
    assert request["attempt"] == 1
    assert request["request"]["model"] == "scripted"
    user = next(m for m in request["request"]["messages"] if m["role"] == "user")
    assert "where is order 5521?" in user["content"]
    assert request["answer"] == RAW
    assert request["duration_ms"] >= 0
    assert request["decision"]["should_respond"] is True
    assert request["error"] is None
    [sent] = shown["sent"]
    assert sent["kind"] == "reply"
    assert sent["content"] == world.chatwoot.sent[0].content == "Order 5521 ships today."
    assert sent["chatwoot_message_id"] == world.chatwoot.sent[0].message_id


async def _stored(world: World, buffer_id: uuid.UUID) -> StoredTrace:
    trace = await stored_trace(world.runtime.store.engine, buffer_id)
    assert trace is not None
    return trace


def test_trace_refuses_an_unknown_buffer(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = tmp_path / "chatbuffer.db"
    path.write_bytes(sqlite_template.read_bytes())
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    missing = uuid.uuid4()

    code = cli.main(["buffers", "trace", str(missing)])

    assert code == cli.USAGE_ERROR
    assert f"no buffer {missing}" in capsys.readouterr().err
