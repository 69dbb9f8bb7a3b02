"""``ReplyModel`` decorator that keeps each request of a buffer's answer in its trace
(``TraceLog``): the body as sent, the model's text, the decision or the error."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.model import ModelDecision
from chatbuffer.domain.ports import Clock, ModelExchange, ReplyModel, TraceLog
from chatbuffer.errors import InvalidModelAnswer
from chatbuffer.observability import turns

logger = logging.getLogger(__name__)

#: A request body's image parts are shortened to this many characters of their data: URL.
_DATA_URL_KEPT = 40


class TracedReplyModel:
    """Records each ``decide`` made while a buffer is answered (outside one, e.g. ``prompt try``,
    nothing is recorded). A failed write is logged and costs only the trace."""

    def __init__(
        self,
        inner: ReplyModel,
        log: TraceLog,
        clock: Clock,
        request_of: Callable[[Prompt], Mapping[str, Any]] | None = None,
    ) -> None:
        self._inner = inner
        self._log = log
        self._clock = clock
        self._request_of = request_of

    async def decide(self, prompt: Prompt) -> ModelDecision:
        turn = turns.current()
        if turn is None:
            return await self._inner.decide(prompt)
        turn.raw_answer = None
        start = self._clock.now()
        try:
            answer = await self._inner.decide(prompt)
        except Exception as exc:
            raw = exc.answer if isinstance(exc, InvalidModelAnswer) else turn.raw_answer
            await self._record(turn, prompt, start, raw, None, f"{type(exc).__name__}: {exc}")
            raise
        await self._record(turn, prompt, start, turn.raw_answer, asdict(answer), None)
        return answer

    async def _record(
        self,
        turn: turns.Turn,
        prompt: Prompt,
        start: datetime,
        raw: str | None,
        decision: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        try:
            request = shortened(self._request_of(prompt)) if self._request_of else None
            await self._log.record_exchange(
                ModelExchange(
                    key=turn.key,
                    buffer_id=uuid.UUID(turn.buffer_id),
                    attempt=turn.attempt,
                    requested_at=start,
                    duration_ms=round((self._clock.now() - start).total_seconds() * 1000),
                    request=request,
                    answer=raw,
                    decision=decision,
                    error=error,
                )
            )
        except Exception as exc:
            logger.warning(
                "could not keep the trace of buffer %s: %s", turn.buffer_id, type(exc).__name__
            )


def shortened(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with every image's data: URL cut to its type and length (the image itself stays
    in Chatwoot; a trace row should not be megabytes)."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value.startswith("data:") and len(value) > _DATA_URL_KEPT:
            head = value.split(",", 1)[0]
            return f"{head},… ({len(value)} characters)"
        return value

    result: dict[str, Any] = walk(dict(body))
    return result
