"""Bursts for any consumer: with BURST_WEBHOOK_URL, a closed burst goes to the operator's endpoint
as one signed event instead of to the model, and its answer is delivered like a model's."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatbuffer.simulator.server import serve_in_background
from tests.e2e.conftest import (
    ACCOUNT,
    REPLY_BOUND_S,
    Service,
    World,
    free_port,
    simulators,
)

pytestmark = pytest.mark.e2e

SECRET = "burst-webhook-secret-for-tests"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
#: A failed attempt, the retry back-off (2 s) and the second attempt, after the window.
RETRIED_BOUND_S = REPLY_BOUND_S + 8


@dataclass
class Consumer:
    """The operator's own agent: checks each delivery's signature and answers, or fails."""

    failing: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)
    bad_signatures: int = 0

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        stamp = request.headers["x-chatbuffer-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        if not hmac.compare_digest(
            request.headers["x-chatbuffer-signature"], "sha256=" + expected.hexdigest()
        ):
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        event = json.loads(body)
        self.events.append(event)
        self.deliveries.append(request.headers["x-chatbuffer-delivery"])
        if self.failing:
            return JSONResponse({"error": "our agent is down"}, status_code=500)
        said = " / ".join(m["content"] for m in event["messages"])
        return JSONResponse(
            {"shouldRespond": True, "content": f"agent heard: {said}", "confidence": 0.9}
        )


@asynccontextmanager
async def world_with_consumer(
    db_url: str, tmp_path: Path, consumer: Consumer, **overrides: str
) -> AsyncIterator[World]:
    url, stop = await serve_in_background(
        Starlette(routes=[Route("/bursts", consumer.receive, methods=["POST"])])
    )
    port = free_port()
    try:
        async with simulators(port) as sims:
            env = sims.service_env(
                db_url,
                BURST_WEBHOOK_URL=f"{url}/bursts",
                BURST_WEBHOOK_SECRET=SECRET,
                **overrides,
            )
            del env["OPENAI_API_KEY"]  # the model is never asked
            service = Service(env=env, port=port, log=tmp_path / "service.log")
            await service.start()
            try:
                yield sims.world(service)
            finally:
                await service.stop()
            service.assert_log_free_of([SECRET])
    finally:
        await stop()


async def test_a_burst_goes_to_the_consumer_once_and_its_answer_is_the_reply(
    db_url: str, tmp_path: Path
) -> None:
    consumer = Consumer()
    async with world_with_consumer(db_url, tmp_path, consumer) as world:
        for text in ["hi", "my order 4411", "has not arrived"]:
            await world.say(61, text)
            await asyncio.sleep(0.1)
        [reply] = await world.wait_for_replies(61, 1, REPLY_BOUND_S)
        await asyncio.sleep(0.5)  # a second delivery or reply would show by now
        assert len(world.replies(61)) == 1
        assert world.model.requests == []
    assert reply["content"] == "agent heard: hi / my order 4411 / has not arrived"
    [event] = consumer.events
    jsonschema.validate(event, json.loads((SCHEMAS / "burst-event.schema.json").read_text()))
    assert (event["account_id"], event["conversation_id"]) == (ACCOUNT, 61)
    assert [m["content"] for m in event["messages"]] == ["hi", "my order 4411", "has not arrived"]
    assert consumer.deliveries == [event["buffer_id"]]
    assert consumer.bad_signatures == 0


async def test_a_failing_consumer_is_retried_then_the_conversation_goes_to_a_human(
    db_url: str, tmp_path: Path
) -> None:
    consumer = Consumer(failing=True)
    async with world_with_consumer(
        db_url, tmp_path, consumer, MAX_PROCESSING_ATTEMPTS="2"
    ) as world:
        await world.say(62, "is anyone there?")
        chatwoot = world.chatwoot
        assert await world.wait_for(
            lambda: (
                bool(chatwoot.private_notes(ACCOUNT, 62)) and chatwoot.status(ACCOUNT, 62) == "open"
            ),
            RETRIED_BOUND_S,
        )
        assert world.replies(62) == []
    # Two attempts, one burst: the same delivery id both times.
    assert len(consumer.deliveries) == 2
    assert len(set(consumer.deliveries)) == 1


def test_the_answer_schema_takes_what_the_service_accepts() -> None:
    schema = json.loads((SCHEMAS / "burst-answer.schema.json").read_text())
    jsonschema.validate({"shouldRespond": True, "content": "hi", "confidence": 0.8}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"shouldRespond": True, "confidence": 2}, schema)
