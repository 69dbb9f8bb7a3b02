"""Decorators around the ports that time each call into the process's ``Metrics``: the reply model,
Chatwoot, Chatwoot's history and the store. The worker and the intake never see the difference."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import ConversationKey, HistoryEntry, ModelDecision
from chatbuffer.domain.ports import ChatwootAPI, Clock, HistorySource, ReplyModel
from chatbuffer.errors import ChatwootError, InvalidModelAnswer
from chatbuffer.observability import turns
from chatbuffer.observability.metrics import Metrics, ignored_slug, seconds_between

T = TypeVar("T")


class MeasuredReplyModel:
    """``ReplyModel``: each request's duration and outcome, and the answer's confidence (also
    noted on the buffer being answered, for its ``buffer_processed`` line)."""

    def __init__(self, inner: ReplyModel, metrics: Metrics, clock: Clock) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    async def decide(self, prompt: Prompt) -> ModelDecision:
        start = self._clock.now()
        outcome = "error"
        try:
            answer = await self._inner.decide(prompt)
            outcome = "ok"
        except InvalidModelAnswer:
            outcome = "invalid"
            raise
        finally:
            elapsed = seconds_between(start, self._clock.now())
            self._metrics.llm_duration.labels(outcome).observe(elapsed)
            turns.note_model_request()
        self._metrics.llm_confidence.observe(answer.confidence)
        turns.note_decision(answer)
        return answer


class MeasuredChatwoot:
    """``ChatwootAPI``: each call's duration, by endpoint and by Chatwoot's answer (``ok``, the
    HTTP status of a refusal, or ``error`` when Chatwoot did not answer)."""

    def __init__(self, inner: ChatwootAPI, metrics: Metrics, clock: Clock) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    async def _timed(self, endpoint: str, call: Awaitable[T]) -> T:
        return await _time_chatwoot(self._metrics, self._clock, endpoint, call)

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        await self._timed("toggle_typing", self._inner.set_typing(key, on=on))

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        return await self._timed(
            "create_message",
            self._inner.send_message(
                key, content, private=private, content_attributes=content_attributes
            ),
        )

    async def set_status(self, key: ConversationKey, status: str) -> None:
        await self._timed("toggle_status", self._inner.set_status(key, status))

    async def find_marked(
        self, key: ConversationKey, marker: Marker, *, after_message_id: int | None
    ) -> int | None:
        return await self._timed(
            "list_messages",
            self._inner.find_marked(key, marker, after_message_id=after_message_id),
        )


class MeasuredHistory:
    """``HistorySource``: timed as Chatwoot's ``list_messages`` with the user token."""

    def __init__(self, inner: HistorySource, metrics: Metrics, clock: Clock) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    async def earlier(
        self, key: ConversationKey, before_message_id: int, limit: int
    ) -> Sequence[HistoryEntry]:
        return await _time_chatwoot(
            self._metrics,
            self._clock,
            "list_earlier_messages",
            self._inner.earlier(key, before_message_id, limit),
        )


async def _time_chatwoot(metrics: Metrics, clock: Clock, endpoint: str, call: Awaitable[T]) -> T:
    start = clock.now()
    status = "error"
    try:
        result = await call
        status = "ok"
        return result
    except ChatwootError as exc:
        if exc.status is not None:
            status = str(exc.status)
        raise
    finally:
        metrics.chatwoot_duration.labels(endpoint, status).observe(
            seconds_between(start, clock.now())
        )


class MeasuredStore:
    """Any store: each public coroutine method timed as ``operation=<method name>``; everything
    else passes through. One class for all the store's ports, so a port added later is measured
    without a change here."""

    def __init__(self, inner: object, metrics: Metrics, clock: Clock) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock
        self._wrapped: dict[str, Callable[..., Awaitable[Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        found = self._wrapped.get(name)
        if found is not None:
            return found
        value = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(value):
            return value
        histogram = self._metrics.db_duration.labels(name)
        clock = self._clock

        @functools.wraps(value)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock.now()
            try:
                return await value(*args, **kwargs)
            finally:
                histogram.observe(seconds_between(start, clock.now()))

        self._wrapped[name] = timed
        return timed


def token_counter(metrics: Metrics) -> Callable[[int, int], None]:
    """What the OpenAI adapters call with each answer's prompt and completion tokens."""
    prompt = metrics.llm_tokens.labels("prompt")
    completion = metrics.llm_tokens.labels("completion")

    def count(prompt_tokens: int, completion_tokens: int) -> None:
        prompt.inc(max(0, prompt_tokens))
        completion.inc(max(0, completion_tokens))

    return count


_intake_log = logging.getLogger("chatbuffer.intake")

#: What became of a delivery the intake handled, by the ``status`` of its answer.
_OUTCOMES = {"buffered", "duplicate", "cancelled", "resumed", "updated"}


class MeasuredIntake:
    """The intake's ``handle``: counts each delivery under its outcome and logs every ignored one
    with its reason (a webhook that did nothing is what an operator asks about first)."""

    def __init__(self, handle: Callable[[Any], Awaitable[Mapping[str, Any]]], metrics: Metrics):
        self._handle = handle
        self._received = metrics.messages_received

    async def __call__(self, body: Any) -> Mapping[str, Any]:
        answer = await self._handle(body)
        status = answer.get("status")
        # "kept": a contact's message the bot will not act on (conversation not active, a human
        # answering), stored only for the history; an operator asks about it as about an ignore.
        if status in ("ignored", "kept"):
            reason = str(answer.get("reason", ""))
            outcome = ignored_slug(reason)
            _intake_log.info(
                "webhook_ignored",
                extra={"reason": reason, "outcome": outcome, **_delivery_fields(body)},
            )
        else:
            # A control word is stored like any message; its burst is then handed off.
            stored = "buffered" if status == "handing_off" else str(status)
            outcome = stored if stored in _OUTCOMES else "other"
        self._received.labels(outcome).inc()
        return answer

    def rejected(self, exc: Exception) -> None:
        """A delivery refused before the intake saw it (size, signature, JSON): 4xx."""
        self._received.labels("rejected").inc()
        _intake_log.info(
            "webhook_rejected",
            extra={"reason": str(exc), "status": getattr(exc, "status_code", None)},
        )


def _delivery_fields(body: Any) -> dict[str, Any]:
    """Which event and conversation a delivery was about, as far as it says (never its text)."""
    if not isinstance(body, dict):
        return {}
    event = body.get("event")
    fields: dict[str, Any] = {"event": event if isinstance(event, str) else None}
    account = body.get("account")
    if isinstance(account, dict):
        fields["account_id"] = account.get("id")
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        fields["conversation_id"] = conversation.get("id")
        fields["message_id"] = body.get("id")
    else:
        fields["conversation_id"] = body.get("id")
    return {k: v for k, v in fields.items() if isinstance(v, str | int) and v is not None}
