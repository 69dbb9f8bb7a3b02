"""The reply model adapter against a mocked OpenAI endpoint: answers and failures."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from chatbuffer.ai.openai_model import OpenAIReplyModel
from chatbuffer.domain.aggregation import Prompt
from chatbuffer.errors import ModelError

PROMPT = Prompt(system="be brief", user="- hi")


def model(handler) -> OpenAIReplyModel:
    client = openai.AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    return OpenAIReplyModel(model="m", client=client)


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
    "content", ["not json", '{"content": "no flag"}', '{"shouldRespond": true, "confidence": 7}']
)
async def test_an_unusable_answer_is_a_retryable_model_error(content: str) -> None:
    with pytest.raises(ModelError, match="not the expected JSON") as caught:
        await model(lambda request: completion(content)).decide(PROMPT)
    assert caught.value.retryable


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
