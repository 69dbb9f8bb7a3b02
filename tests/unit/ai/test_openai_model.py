"""The reply model adapter against a mocked OpenAI endpoint: answers and failures."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from chatbuffer.ai.openai_model import OpenAIReplyModel, parse_decision
from chatbuffer.domain.aggregation import Prompt, PromptImage, Turn
from chatbuffer.errors import ImagesRefused, InvalidModelAnswer, ModelError

PROMPT = Prompt(system="be brief", user="- hi")
PICTURED = Prompt(
    system="be brief",
    user="- [image 1, attached below]",
    images=(PromptImage("[image 1]", "data:image/png;base64,iVBORw=="),),
)


def model(handler, **options) -> OpenAIReplyModel:
    client = openai.AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    return OpenAIReplyModel(model="m", client=client, **options)


def completion(content: str) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        },
    )


async def test_the_plans_json_becomes_a_decision() -> None:
    answer = {"shouldRespond": True, "content": "Hi!", "confidence": 0.8, "intent": "greeting"}
    decision = await model(lambda request: completion(json.dumps(answer))).decide(PROMPT)
    assert (decision.should_respond, decision.content, decision.confidence) == (True, "Hi!", 0.8)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "it is not JSON (Expecting value: line 1 column 1 (char 0))"),
        ("", "it is empty"),
        ("[1, 2]", "it is JSON but not an object"),
        ('{"content": "no flag"}', "shouldRespond: Field required; confidence: Field required"),
        (
            '{"shouldRespond": true, "confidence": 7, "content": "secret text"}',
            "confidence: Input should be less than or equal to 1",
        ),
    ],
)
async def test_an_unusable_answer_says_what_is_wrong_without_quoting_it(
    content: str, problem: str
) -> None:
    with pytest.raises(InvalidModelAnswer, match="not the expected JSON") as caught:
        await model(lambda request: completion(content)).decide(PROMPT)
    assert caught.value.retryable
    assert (caught.value.answer, caught.value.problem) == (content, problem)
    assert "secret text" not in str(caught.value)


def test_extra_keys_are_ignored_and_defaults_fill_the_optional_ones() -> None:
    decision = parse_decision('{"shouldRespond": false, "confidence": 0.2, "mood": "calm"}')
    assert (decision.content, decision.intent, decision.actions) == ("", "unknown", ())


async def test_the_request_is_the_one_described_and_is_what_is_sent() -> None:
    seen: list[dict] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return completion(json.dumps({"shouldRespond": True, "confidence": 0.9}))

    repaired = Prompt(
        system=PICTURED.system,
        user=PICTURED.user,
        images=PICTURED.images,
        followups=(Turn("assistant", "oops"), Turn("user", "fix it")),
    )
    adapter = model(record, temperature=0.0, max_tokens=300)
    await adapter.decide(repaired)
    assert seen == [adapter.request(repaired)]
    assert seen[0] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "- [image 1, attached below]"},
                    {"type": "text", "text": "[image 1]"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
                ],
            },
            {"role": "assistant", "content": "oops"},
            {"role": "user", "content": "fix it"},
        ],
        "response_format": {"type": "json_object"},
        "temperature": 0.0,
        "max_tokens": 300,
    }
    # Without images the user message stays plain text, and no limit is sent unless set.
    plain = model(record).request(PROMPT)
    assert plain["messages"][1] == {"role": "user", "content": "- hi"}
    assert "max_tokens" not in plain and plain["temperature"] == 0.3


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "Invalid content type. image_url is only supported by certain models."),
        (400, "messages[1].content must be a string"),
        (422, "unknown variant `image_url`, expected `text`"),
        (400, "llava is not a multimodal model"),
    ],
)
async def test_a_refusal_of_images_is_told_apart(status: int, message: str) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json={"error": {"message": message}})

    with pytest.raises(ImagesRefused):
        await model(refuse).decide(PICTURED)
    # The same answer to a request without images is an ordinary refusal.
    with pytest.raises(ModelError, match=f"answered {status}") as caught:
        await model(refuse).decide(PROMPT)
    assert not isinstance(caught.value, ImagesRefused)


async def test_rate_limit_is_retried_after_the_servers_delay() -> None:
    def limited(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}}
        )

    with pytest.raises(ModelError, match="answered 429") as caught:
        await model(limited).decide(PROMPT)
    error = caught.value
    assert (error.retryable, error.retry_after, error.rate_limited) == (True, 7.0, True)


async def test_a_bad_request_is_not_retried() -> None:
    def refused(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json={"error": {"message": "bad model"}})

    with pytest.raises(ModelError, match="answered 400") as caught:
        await model(refused).decide(PROMPT)
    assert not caught.value.retryable
    assert not caught.value.rate_limited


async def test_an_unreachable_endpoint_is_retryable() -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(ModelError, match="could not reach the model endpoint") as caught:
        await model(down).decide(PROMPT)
    assert caught.value.retryable
