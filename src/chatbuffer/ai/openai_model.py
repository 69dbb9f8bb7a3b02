"""``OpenAIReplyModel``: one chat completion per burst through the official ``openai`` SDK."""

from __future__ import annotations

import json
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.model import ModelDecision
from chatbuffer.errors import ModelError
from chatbuffer.openai_errors import translated


class _DecisionWire(BaseModel):
    """The plan's JSON answer; lenient about extra keys, strict about the ones we use."""

    model_config = ConfigDict(extra="ignore")

    should_respond: bool = Field(alias="shouldRespond")
    content: str = ""
    confidence: float = Field(ge=0.0, le=1.0)
    intent: str = "unknown"
    actions: list[str] = Field(default_factory=list)


class OpenAIReplyModel:
    """Implements :class:`chatbuffer.domain.ports.ReplyModel`.

    Build the client with ``max_retries=0``: the worker owns retries, so one policy (and one
    attempt count on the job) covers every failure.
    """

    def __init__(self, *, model: str, client: openai.AsyncOpenAI) -> None:
        self._model = model
        self._client = client

    async def aclose(self) -> None:
        await self._client.close()

    async def decide(self, prompt: Prompt) -> ModelDecision:
        with translated(ModelError, "model endpoint"):
            completion = await self._client.chat.completions.create(
                model=self._model,
                messages=[
                    {"role": "system", "content": prompt.system},
                    {"role": "user", "content": prompt.user},
                ],
                response_format={"type": "json_object"},
                temperature=0.3,
            )
        if not completion.choices:
            raise ModelError("the model returned no choices")
        return parse_decision(completion.choices[0].message.content)


def parse_decision(content: str | None) -> ModelDecision:
    """Read the model's JSON answer; anything else is a (retryable) ``ModelError``."""
    if not content:
        raise ModelError("the model returned an empty answer")
    try:
        raw: Any = json.loads(content)
        wire = _DecisionWire.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise ModelError("the model's answer is not the expected JSON object") from exc
    return ModelDecision(
        should_respond=wire.should_respond,
        content=wire.content,
        confidence=wire.confidence,
        intent=wire.intent,
        actions=tuple(wire.actions),
    )
