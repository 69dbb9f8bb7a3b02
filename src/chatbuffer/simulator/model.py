"""A deterministic OpenAI-compatible chat-completions server for tests and demos.

Only ``POST /v1/chat/completions`` (non-streaming) is served: that is all the reply pipeline uses.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

Script = Callable[[list[dict[str, Any]]], dict[str, Any] | str]

VOICE_MAGIC = b"CHATBUFFER-SIMULATED-VOICE:"


def voice_note(text: str) -> bytes:
    """Bytes standing in for a recording of ``text``; the simulator transcribes them back."""
    return VOICE_MAGIC + text.encode()


_BURST_HEADING = "Combined message content:\n"
_ORDER_NUMBER = re.compile(r"#?\b(\d{4,})\b")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content: only text parts carry what the customer wrote.
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


_SUMMARY_REQUEST = "running summary"
_FOLD_HEADING = "Earlier turns to fold in, oldest first:\n<conversation_history>\n"


def summarizer(messages: list[dict[str, Any]]) -> str:
    """A summary request's answer: ``Summary:`` and the folded turns, joined by " / " (the
    summary so far is left out, so each refresh shows what it folded)."""
    user = next((_text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")
    folded = user.split(_FOLD_HEADING, 1)[-1].split("\n</conversation_history>", 1)[0]
    return "Summary: " + " / ".join(line.strip() for line in folded.splitlines() if line.strip())


def support_agent(messages: list[dict[str, Any]]) -> dict[str, Any] | str:
    """Default script: a polite agent that acknowledges the customer's lines from the last user
    message (lines starting with ``- ``, else the whole text) and names any order numbers; a
    request for the conversation's summary gets ``summarizer``'s."""
    system = next((m for m in messages if m.get("role") == "system"), {})
    if _SUMMARY_REQUEST in _text_of(system.get("content")):
        return summarizer(messages)
    user_texts = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    # The burst is in the first user message; a repair request may follow it.
    last = user_texts[-1] if user_texts else ""
    text = next((t for t in user_texts if _BURST_HEADING in t), last)
    # chatbuffer's prompt lists the burst under this heading; other sections (transcripts,
    # history) repeat or predate it.
    if _BURST_HEADING in text:
        text = text.split(_BURST_HEADING, 1)[1].split("\n\n", 1)[0]
    points = [
        line.strip()[2:].strip() for line in text.splitlines() if line.strip().startswith("- ")
    ] or ([text.strip()] if text.strip() else [])
    orders = list(dict.fromkeys(_ORDER_NUMBER.findall("\n".join(points))))
    count = len(points)
    thanks = f"Hi! Thanks for your {count} message{'s' if count != 1 else ''}."
    if orders:
        listed = ", ".join(f"#{number}" for number in orders)
        content = f"{thanks} I'm checking order {listed} for you now and will update you shortly."
        intent = "order_status"
    else:
        content = f"{thanks} I've noted everything and will help you right away."
        intent = "general_question"
    return {
        "shouldRespond": True,
        "content": content,
        "confidence": 0.92,
        "intent": intent,
        "actions": [],
    }


@dataclass(frozen=True, slots=True)
class TranscriptionCall:
    """One ``audio/transcriptions`` request, as the endpoint saw it."""

    filename: str
    model: str
    api_key: str


@dataclass(slots=True)
class _Failure:
    status: int
    remaining: int
    retry_after: int | None


@dataclass(slots=True)
class _Delay:
    seconds: float
    remaining: int


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
    )


class ScriptedModelServer:
    """Answers chat completions with ``script(messages)``: a dict is sent as JSON content, a str
    verbatim (so tests can return invalid JSON). Serve ``.app`` with any ASGI server."""

    def __init__(
        self,
        *,
        script: Script | None = None,
        now: Callable[[], float] = time.time,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: the only key accepted (401 for any other); None accepts any key."""
        self._script = script or support_agent
        self._api_key = api_key
        self._now = now
        self._ids = itertools.count(1)
        self._failures: list[_Failure] = []
        self._delays: list[_Delay] = []
        self.requests: list[dict[str, Any]] = []
        self.transcriptions: list[str] = []
        self.transcription_calls: list[TranscriptionCall] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._complete, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def fail_next(self, status: int, *, times: int = 1, retry_after: int | None = None) -> None:
        """Answer the next ``times`` completions with ``status`` (and ``Retry-After`` if given)."""
        self._failures.append(_Failure(status, times, retry_after))

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` completions for ``seconds`` before answering."""
        self._delays.append(_Delay(seconds, times))

    def _refused(self, token: str | None) -> bool:
        return token is None or (self._api_key is not None and token != self._api_key)

    async def _models(self, request: Request) -> Response:
        """The one model it plays, as OpenAI lists models."""
        if self._refused(_bearer(request)):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": "scripted", "object": "model", "created": 0, "owned_by": "simulator"}
                ],
            }
        )

    async def _transcribe(self, request: Request) -> Response:
        """A deterministic speech-to-text: audio made by :func:`voice_note` says its text."""
        token = _bearer(request)
        if token is None or self._refused(token):
            return _error(
                401, "Missing or invalid API key.", "invalid_request_error", "invalid_api_key"
            )
        # The context closes the spooled upload file; left open it warns when collected.
        async with request.form() as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return _error(400, "'file' is required.", "invalid_request_error")
            audio = await upload.read()
            self.transcriptions.append(upload.filename or "")
            self.transcription_calls.append(
                TranscriptionCall(upload.filename or "", str(form.get("model", "")), token)
            )
        text = audio.removeprefix(VOICE_MAGIC).decode() if audio.startswith(VOICE_MAGIC) else ""
        return PlainTextResponse(text)

    async def _complete(self, request: Request) -> Response:
        if self._refused(_bearer(request)):
            return _error(
                401, "Missing or invalid API key.", "invalid_request_error", "invalid_api_key"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "Request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' must be a list.", "invalid_request_error")
        self.requests.append(body)

        delay = _consume(self._delays)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = _consume(self._failures)
        if failure is not None:
            response = _error(failure.status, "Simulated failure.", "server_error")
            if failure.retry_after is not None:
                response.headers["Retry-After"] = str(failure.retry_after)
            return response
        if body.get("stream"):
            return _error(400, "Streaming is not supported here.", "invalid_request_error")

        result = self._script(body["messages"])
        content = result if isinstance(result, str) else json.dumps(result)
        prompt_tokens = sum(len(_text_of(m.get("content")).split()) for m in body["messages"])
        completion_tokens = len(content.split())
        return JSONResponse(
            {
                "id": f"chatcmpl-sim-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(self._now()),
                "model": str(body.get("model", "scripted")),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


_Hook = TypeVar("_Hook", _Failure, _Delay)


def _consume(queue: list[_Hook]) -> _Hook | None:
    if not queue:
        return None
    head = queue[0]
    head.remaining -= 1
    if head.remaining <= 0:
        queue.pop(0)
    return head
