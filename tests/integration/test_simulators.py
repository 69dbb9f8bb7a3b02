"""The Chatwoot and model simulators, served on loopback and driven by real clients."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.model import ScriptedModelServer
from chatbuffer.simulator.server import serve_in_background
from tests.support.swagger import SwaggerValidator, load_validator

TOKEN = "bot-token"
CONVERSATION = "/api/v1/accounts/1/conversations/1532"
SECRET = "whsec"
FIXED_NOW = 1_786_701_731.0


@dataclass
class Served:
    url: str
    client: httpx2.AsyncClient


@dataclass
class Receiver:
    """A stand-in for the bot's webhook endpoint."""

    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, request: Request) -> Response:
        self.calls.append((dict(request.headers), await request.body()))
        self.arrived.set()
        return Response(status_code=200)


@pytest.fixture
def swagger() -> SwaggerValidator:
    return load_validator()


@pytest.fixture
def chatwoot(swagger: SwaggerValidator) -> ChatwootSimulator:
    return ChatwootSimulator(api_token=TOKEN, validator=swagger)


@pytest.fixture
async def chatwoot_http(chatwoot: ChatwootSimulator) -> AsyncIterator[Served]:
    url, stop = await serve_in_background(chatwoot.app)
    try:
        async with httpx2.AsyncClient(
            base_url=url, headers={"api_access_token": TOKEN}, trust_env=False
        ) as client:
            yield Served(url, client)
    finally:
        await stop()


@pytest.fixture
def model() -> ScriptedModelServer:
    return ScriptedModelServer()


@pytest.fixture
async def model_url(model: ScriptedModelServer) -> AsyncIterator[str]:
    url, stop = await serve_in_background(model.app)
    try:
        yield url
    finally:
        await stop()


def sdk(url: str, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, **options)


# -- Chatwoot simulator ---------------------------------------------------------------------


async def test_reply_flow_matches_swagger(
    chatwoot: ChatwootSimulator, chatwoot_http: Served, swagger: SwaggerValidator
) -> None:
    http = chatwoot_http.client
    calls = [
        ("POST", "/toggle_typing_status", {"typing_status": "on", "is_private": False}),
        ("POST", "/messages", {"content": "Hi Ana!", "content_attributes": {"cb": 1}}),
        ("POST", "/messages", {"content": "internal", "private": True}),
        ("POST", "/toggle_typing_status", {"typing_status": "off", "is_private": False}),
        ("POST", "/toggle_status", {"status": "open"}),
    ]
    answers = [
        await http.request(method, CONVERSATION + suffix, json=body)
        for method, suffix, body in calls
    ]
    shown = await http.get(CONVERSATION)

    assert [a.status_code for a in answers] == [200] * len(calls)
    assert shown.status_code == 200
    assert chatwoot.violations == []
    assert answers[0].content == b""

    reply = answers[1].json()
    assert reply["id"] == 10_000
    assert reply["message_type"] == 1
    assert isinstance(reply["created_at"], int)
    assert reply["sender_type"] == "AgentBot"
    assert reply["content_attributes"] == {"cb": 1}
    assert swagger.response_problems("POST", CONVERSATION + "/messages", 200, reply) == []
    assert answers[2].json()["id"] == 10_001

    assert answers[4].json() == {
        "meta": {},
        "payload": {
            "success": True,
            "conversation_id": 1532,
            "current_status": "open",
            "snoozed_until": None,
        },
    }
    toggle = CONVERSATION + "/toggle_status"
    assert swagger.response_problems("POST", toggle, 200, answers[4].json()) == []

    assert chatwoot.replies(1, 1532) == [reply]
    assert [n["content"] for n in chatwoot.private_notes(1, 1532)] == ["internal"]
    assert chatwoot.typing_events(1, 1532) == ["on", "off"]
    assert chatwoot.status(1, 1532) == "open"
    conversation = shown.json()
    assert conversation["status"] == "open"
    assert conversation["id"] == 1532
    assert swagger.response_problems("GET", CONVERSATION, 200, conversation) == []


async def test_requests_are_recorded_in_order(
    chatwoot: ChatwootSimulator, chatwoot_http: Served
) -> None:
    await chatwoot_http.client.post(CONVERSATION + "/messages", json={"content": "a"})
    await chatwoot_http.client.get(CONVERSATION)

    first, second = chatwoot.requests
    assert (first.index, second.index) == (0, 1)
    assert (first.method, first.path, first.json) == (
        "POST",
        CONVERSATION + "/messages",
        {"content": "a"},
    )
    assert first.headers["api_access_token"] == TOKEN
    assert (second.method, second.json) == ("GET", None)


async def test_conversations_start_pending(
    chatwoot: ChatwootSimulator, chatwoot_http: Served
) -> None:
    shown = await chatwoot_http.client.get("/api/v1/accounts/2/conversations/9")

    assert shown.json()["status"] == "pending"
    assert chatwoot.status(2, 9) == "pending"


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_bad_token_is_401(
    chatwoot: ChatwootSimulator, chatwoot_http: Served, token: str | None
) -> None:
    headers = {} if token is None else {"api_access_token": token}
    async with httpx2.AsyncClient(
        base_url=chatwoot_http.url, headers=headers, trust_env=False
    ) as raw:
        answer = await raw.post(CONVERSATION + "/messages", json={"content": "hi"})

    assert answer.status_code == 401
    assert answer.json() == {"error": "Invalid Access Token"}
    assert len(chatwoot.requests) == 1
    assert chatwoot.replies(1, 1532) == []
    # Only the missing header breaks the spec; a wrong token is Chatwoot's business.
    assert len(chatwoot.violations) == (1 if token is None else 0)


@pytest.mark.parametrize(
    ("method", "suffix", "body", "expected"),
    [
        ("POST", "/toggle_typing_status", {"typing_status": 5}, "body.typing_status"),
        ("POST", "/messages", {"content": ["a", "b"]}, "body.content"),
        ("POST", "/messages", {"private": False}, "'content' is a required property"),
        ("POST", "/toggle_status", {"status": "closed"}, "body.status"),
        ("POST", "/toggle_priority_typo", {"priority": "high"}, "no such path"),
        ("PUT", "", None, "method not allowed"),
    ],
)
async def test_swagger_validator_rejects_wrong_calls(
    chatwoot: ChatwootSimulator,
    chatwoot_http: Served,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    expected: str,
) -> None:
    answer = await chatwoot_http.client.request(method, CONVERSATION + suffix, json=body)

    assert answer.status_code == 400
    errors = answer.json()["errors"]
    assert any(expected in e for e in errors), errors
    [violation] = chatwoot.violations
    assert list(violation.problems) == errors
    assert chatwoot.replies(1, 1532) == []
    assert chatwoot.typing_events(1, 1532) == []
    assert chatwoot.status(1, 1532) == "pending"


async def test_swagger_validator_flags_path_parameter_types(swagger: SwaggerValidator) -> None:
    problems = swagger.request_problems(
        "GET", "/api/v1/accounts/acme/conversations/1", {"api_access_token": "t"}, None
    )

    assert problems == [
        "GET /api/v1/accounts/{account_id}/conversations/{conversation_id}: "
        "path parameter account_id='acme' is not a valid integer"
    ]


async def test_swagger_validator_requires_the_token_header(swagger: SwaggerValidator) -> None:
    problems = swagger.request_problems("POST", CONVERSATION + "/messages", {}, {"content": "x"})

    assert len(problems) == 1
    assert "missing auth header (api_access_token)" in problems[0]


async def test_fail_next_answers_status_then_recovers(
    chatwoot: ChatwootSimulator, chatwoot_http: Served
) -> None:
    chatwoot.fail_next("/messages", status=429, times=2, retry_after=7)
    http = chatwoot_http.client

    answers = [
        await http.post(CONVERSATION + "/messages", json={"content": "hi"}) for _ in range(3)
    ]
    typing = await http.post(CONVERSATION + "/toggle_typing_status", json={"typing_status": "on"})

    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "7"
    assert typing.status_code == 200
    assert len(chatwoot.requests) == 4
    assert len(chatwoot.replies(1, 1532)) == 1


async def test_faulted_requests_are_still_validated(
    chatwoot: ChatwootSimulator, chatwoot_http: Served
) -> None:
    chatwoot.fail_next("/messages", status=503)

    answer = await chatwoot_http.client.post(CONVERSATION + "/messages", json={"content": 1})

    assert answer.status_code == 503
    [violation] = chatwoot.violations
    assert any("body.content" in p for p in violation.problems)


async def test_fail_next_with_delay(chatwoot: ChatwootSimulator, chatwoot_http: Served) -> None:
    chatwoot.fail_next("/toggle_status", status=503, delay_s=0.2)
    loop = asyncio.get_running_loop()

    started = loop.time()
    answer = await chatwoot_http.client.post(
        CONVERSATION + "/toggle_status", json={"status": "open"}
    )

    assert answer.status_code == 503
    assert "retry-after" not in answer.headers
    assert loop.time() - started >= 0.2
    assert chatwoot.status(1, 1532) == "pending"


async def test_delay_next_still_applies_the_side_effect(
    chatwoot: ChatwootSimulator, chatwoot_http: Served
) -> None:
    chatwoot.delay_next("/messages", 0.3)

    with pytest.raises(httpx2.ReadTimeout):
        await chatwoot_http.client.post(
            CONVERSATION + "/messages", json={"content": "slow"}, timeout=0.05
        )
    for _ in range(100):
        if chatwoot.replies(1, 1532):
            break
        await asyncio.sleep(0.01)

    assert [r["content"] for r in chatwoot.replies(1, 1532)] == ["slow"]


async def test_created_messages_are_echoed_to_the_webhook_signed(swagger: SwaggerValidator) -> None:
    receiver = Receiver()
    receiver_url, stop_receiver = await serve_in_background(
        Starlette(routes=[Route("/hook", receiver.endpoint, methods=["POST"])])
    )
    chatwoot = ChatwootSimulator(
        api_token=TOKEN,
        validator=swagger,
        webhook_url=receiver_url + "/hook",
        webhook_secret=SECRET,
        now=lambda: FIXED_NOW,
    )
    url, stop = await serve_in_background(chatwoot.app)
    try:
        async with httpx2.AsyncClient(
            base_url=url, headers={"api_access_token": TOKEN}, trust_env=False
        ) as http:
            created = await http.post(
                CONVERSATION + "/messages",
                json={"content": "Hi Ana!", "content_attributes": {"chatbuffer": {"batch": 3}}},
            )
        await asyncio.wait_for(receiver.arrived.wait(), 5)
    finally:
        await stop()
        await stop_receiver()

    [(headers, raw)] = receiver.calls
    expected = hmac.new(SECRET.encode(), b"1786701731." + raw, hashlib.sha256).hexdigest()
    assert headers["x-chatwoot-signature"] == f"sha256={expected}"
    assert headers["x-chatwoot-timestamp"] == "1786701731"
    assert headers["x-chatwoot-delivery"]
    payload = json.loads(raw)
    assert payload["event"] == "message_created"
    assert payload["id"] == created.json()["id"]
    assert payload["message_type"] == "outgoing"
    assert payload["sender"]["type"] == "agent_bot"
    assert payload["content_attributes"] == {"chatbuffer": {"batch": 3}}
    assert payload["conversation"]["id"] == 1532
    assert payload["conversation"]["status"] == "pending"
    assert [d.status_code for d in chatwoot.deliveries] == [200]


async def test_unreachable_webhook_is_recorded_not_raised(swagger: SwaggerValidator) -> None:
    # Take a free port and release it, so nothing listens there.
    receiver_url, stop_receiver = await serve_in_background(Starlette())
    await stop_receiver()
    chatwoot = ChatwootSimulator(api_token=TOKEN, webhook_url=receiver_url + "/hook")

    delivery = await chatwoot.send_webhook({"event": "message_created", "id": 5})

    assert delivery.status_code is None
    assert delivery.error == "ConnectError"
    assert chatwoot.deliveries == [delivery]


async def test_stopped_server_refuses_connections() -> None:
    url, stop = await serve_in_background(ScriptedModelServer().app)
    await stop()

    async with httpx2.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post(url + "/v1/chat/completions", json={})


async def test_port_conflict_raises_instead_of_exiting() -> None:
    url, stop = await serve_in_background(Starlette())
    try:
        with pytest.raises(RuntimeError, match="failed to start"):
            await serve_in_background(Starlette(), port=int(url.rsplit(":", 1)[1]))
    finally:
        await stop()


# -- model simulator -------------------------------------------------------------------------


async def test_default_script_through_the_openai_sdk(
    model: ScriptedModelServer, model_url: str
) -> None:
    async with sdk(model_url) as client:
        completion = await client.chat.completions.create(
            model="m",
            messages=[
                {"role": "system", "content": "You are a support agent. Answer in JSON."},
                {
                    "role": "user",
                    "content": "Customer wrote:\n- hi\n- where is order 48213?\n- and #99120",
                },
            ],
            response_format={"type": "json_object"},
        )

    assert completion.object == "chat.completion"
    assert completion.model == "m"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    content = completion.choices[0].message.content
    assert content is not None
    answer = json.loads(content)
    assert answer["shouldRespond"] is True
    assert answer["intent"] == "order_status"
    assert answer["confidence"] == 0.92
    assert answer["actions"] == []
    assert "#48213" in answer["content"]
    assert "#99120" in answer["content"]
    assert "3 messages" in answer["content"]
    [request] = model.requests
    assert request["response_format"] == {"type": "json_object"}
    assert request["messages"][1]["role"] == "user"


async def test_script_dicts_and_strings() -> None:
    replies: list[dict[str, Any] | str] = [{"shouldRespond": False}, "not json {"]
    seen: list[list[dict[str, Any]]] = []

    def script(messages: list[dict[str, Any]]) -> dict[str, Any] | str:
        seen.append(messages)
        return replies[len(seen) - 1]

    url, stop = await serve_in_background(ScriptedModelServer(script=script).app)
    try:
        async with sdk(url) as client:
            contents = [
                (
                    await client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "x"}]
                    )
                )
                .choices[0]
                .message.content
                for _ in range(2)
            ]
    finally:
        await stop()

    assert contents == ['{"shouldRespond": false}', "not json {"]
    assert seen[0] == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic abc"])
async def test_model_requires_a_bearer_token(
    model: ScriptedModelServer, model_url: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx2.AsyncClient(trust_env=False) as http:
        answer = await http.post(
            model_url + "/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers=headers,
        )

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert model.requests == []


async def test_model_fail_next_surfaces_in_the_sdk(
    model: ScriptedModelServer, model_url: str
) -> None:
    model.fail_next(429, retry_after=3)
    model.fail_next(503)
    messages: list[Any] = [{"role": "user", "content": "hi"}]

    async with sdk(model_url) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=messages)
        recovered = await client.chat.completions.create(model="m", messages=messages)

    assert limited.value.response.headers["retry-after"] == "3"
    assert recovered.choices[0].message.content
    assert len(model.requests) == 3


async def test_model_delay_next_causes_sdk_timeouts(
    model: ScriptedModelServer, model_url: str
) -> None:
    model.delay_next(0.5)
    messages: list[Any] = [{"role": "user", "content": "hi"}]

    async with sdk(model_url, timeout=0.1) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="m", messages=messages)
        recovered = await client.chat.completions.create(model="m", messages=messages)

    assert recovered.choices[0].message.content
