"""``OpenAIReplyModel``: one chat completion per burst through the official ``openai`` SDK;
``OpenAISummarizer``: the conversation's rolling summary on the same endpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, cast

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.model import ModelDecision
from chatbuffer.errors import ImagesRefused, InvalidModelAnswer, ModelError
from chatbuffer.openai_errors import translated

DEFAULT_TEMPERATURE = 0.3
#: A summary is asked for in at most about 200 words (``domain.history``); room for that.
SUMMARY_MAX_TOKENS = 600

#: The statuses and words with which OpenAI-compatible endpoints refuse image parts: OpenAI
#: ("Invalid content type. image_url is only supported by certain models."), vLLM and llama.cpp
#: ("… is not a multimodal model", "image input is not supported"), Ollama ("does not support
#: images"), Groq and others ("messages[1].content must be a string"), DeepSeek ("unknown variant
#: `image_url`, expected `text`").
IMAGE_REFUSAL_STATUSES = frozenset({400, 415, 422})
IMAGE_REFUSAL = re.compile(
    r"image|vision|multi-?modal|content[ _]type|content must be a string|unknown variant",
    re.IGNORECASE,
)


class DecisionSchema(BaseModel):
    """The plan's JSON answer: lenient about extra keys, strict about the ones used."""

    model_config = ConfigDict(extra="ignore")

    should_respond: bool = Field(alias="shouldRespond")
    content: str = ""
    confidence: float = Field(ge=0.0, le=1.0)
    intent: str = "unknown"
    actions: list[str] = Field(default_factory=list)


#: Told each answer's prompt and completion tokens, as the endpoint counted them (metrics).
UsageHook = Callable[[int, int], None]


class OpenAIReplyModel:
    """Implements :class:`chatbuffer.domain.ports.ReplyModel`.

    Build the client with ``max_retries=0``: the worker owns retries, so one policy (and one
    attempt count on the job) covers every failure.
    """

    def __init__(
        self,
        *,
        model: str,
        client: openai.AsyncOpenAI,
        temperature: float = DEFAULT_TEMPERATURE,
        max_tokens: int | None = None,
        on_usage: UsageHook | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> None:
        self._model = model
        self._client = client
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._on_usage = on_usage
        #: Told the model's text exactly as it answered (the buffer's trace).
        self._on_answer = on_answer

    async def aclose(self) -> None:
        await self._client.close()

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The body of the chat-completions request for ``prompt``, exactly as it is sent."""
        user: str | list[dict[str, Any]] = prompt.user
        if prompt.images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": prompt.user}]
            for image in prompt.images:
                parts.append({"type": "text", "text": image.label})
                parts.append({"type": "image_url", "image_url": {"url": image.data_url}})
            user = parts
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": user},
        ]
        messages += [{"role": t.role, "content": t.content} for t in prompt.followups]
        body: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "response_format": {"type": "json_object"},
            "temperature": self._temperature,
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        return body

    async def decide(self, prompt: Prompt) -> ModelDecision:
        body = self.request(prompt)
        with translated(ModelError, "model endpoint"):
            try:
                completion = await self._client.chat.completions.create(
                    model=body["model"],
                    messages=cast(Any, body["messages"]),
                    response_format=body["response_format"],
                    temperature=body["temperature"],
                    max_tokens=body.get("max_tokens", openai.omit),
                )
            except openai.APIStatusError as exc:
                if prompt.images and _refuses_images(exc):
                    raise ImagesRefused(
                        f"the model endpoint answered {exc.status_code}: it does not take images"
                    ) from exc
                raise
        _report_usage(completion, self._on_usage)
        if not completion.choices:
            raise ModelError("the model returned no choices")
        content = completion.choices[0].message.content
        if self._on_answer is not None:
            self._on_answer(content or "")
        return parse_decision(content)


def _report_usage(completion: Any, hook: UsageHook | None) -> None:
    usage = getattr(completion, "usage", None)
    if hook is not None and usage is not None:
        hook(usage.prompt_tokens or 0, usage.completion_tokens or 0)


def _refuses_images(exc: openai.APIStatusError) -> bool:
    if exc.status_code not in IMAGE_REFUSAL_STATUSES:
        return False
    return bool(IMAGE_REFUSAL.search(f"{exc.message} {exc.body!r}"))


def parse_decision(content: str | None) -> ModelDecision:
    """Read the model's JSON answer; anything else is an ``InvalidModelAnswer`` (retryable)."""
    answer = content or ""
    try:
        raw: Any = json.loads(answer)
    except ValueError as exc:
        problem = "it is empty" if not answer.strip() else f"it is not JSON ({exc})"
        raise _invalid(answer, problem) from None
    if not isinstance(raw, dict):
        raise _invalid(answer, "it is JSON but not an object")
    try:
        wire = DecisionSchema.model_validate(raw)
    except ValidationError as exc:
        # Field names and rules only: the values may quote the customer.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'answer'}: {e.get('msg', 'invalid')}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise _invalid(answer, problems) from None
    return ModelDecision(
        should_respond=wire.should_respond,
        content=wire.content,
        confidence=wire.confidence,
        intent=wire.intent,
        actions=tuple(wire.actions),
    )


def _invalid(answer: str, problem: str) -> InvalidModelAnswer:
    return InvalidModelAnswer(
        f"the model's answer is not the expected JSON object: {problem}",
        answer=answer,
        problem=problem,
    )


class OpenAISummarizer:
    """Implements :class:`chatbuffer.domain.ports.Summarizer`: one plain-text chat completion
    (``domain.history.summary_prompt``) on the reply model's endpoint and client."""

    def __init__(
        self,
        *,
        model: str,
        client: openai.AsyncOpenAI,
        max_tokens: int = SUMMARY_MAX_TOKENS,
        on_usage: UsageHook | None = None,
    ) -> None:
        self._model = model
        self._client = client
        self._max_tokens = max_tokens
        self._on_usage = on_usage

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The body of the chat-completions request, exactly as it is sent."""
        return {
            "model": self._model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            # A summary retells: no invention wanted.
            "temperature": 0.0,
            "max_tokens": self._max_tokens,
        }

    async def summarize(self, prompt: Prompt) -> str:
        body = self.request(prompt)
        with translated(ModelError, "model endpoint"):
            completion = await self._client.chat.completions.create(
                model=body["model"],
                messages=cast(Any, body["messages"]),
                temperature=body["temperature"],
                max_tokens=body["max_tokens"],
            )
        _report_usage(completion, self._on_usage)
        if not completion.choices:
            raise ModelError("the model returned no choices")
        return (completion.choices[0].message.content or "").strip()
