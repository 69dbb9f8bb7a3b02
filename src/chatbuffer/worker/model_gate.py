"""Admission to the model endpoint for one worker process: the provider's limit, not ours.

A buffer in flight is a cheap asyncio task; what a provider limits is requests. ``ModelGate``
lets at most ``max_concurrency`` calls run at once, optionally no more than
``requests_per_minute`` start per minute, and when one call is refused with a 429 it holds
*every* call of the process until the provider's ``Retry-After`` has passed, instead of letting
each waiting task try and be refused in turn. The refused buffer itself is retried by the
pipeline's retry policy, like any failed attempt.

Policy, not I/O: every wait goes through the injected ``Clock``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.model import Attachment, ModelDecision
from chatbuffer.domain.ports import Clock, ReplyModel, Summarizer, Transcriber
from chatbuffer.errors import DependencyError

logger = logging.getLogger(__name__)

#: The pause after a 429 that names no Retry-After; it doubles while refusals keep coming.
FIRST_PAUSE = timedelta(seconds=1)
#: No pause is longer, whatever the provider says: a bogus Retry-After must not stall the worker
#: for an hour (the refused buffer's own retry still honours it, up to the retry policy's cap).
MAX_PAUSE = timedelta(seconds=60)


class ModelGate:
    """One process's admission to the model endpoint, shared by every call to it."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_concurrency: int,
        requests_per_minute: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if requests_per_minute is not None and requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.in_flight = 0
        # The rate limit as evenly spaced starts (a token bucket that holds one token): a provider
        # that enforces its per-minute limit per second or less still never sees a burst.
        self._interval = (
            timedelta(minutes=1) / requests_per_minute if requests_per_minute else timedelta(0)
        )
        self._next_start: datetime | None = None
        self._paused_until: datetime | None = None
        self._paused_at: datetime | None = None
        self._strikes = 0

    @property
    def paused_until(self) -> datetime | None:
        """When the last 429's pause ends (None if there has been none)."""
        return self._paused_until

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold a slot for one call to the endpoint; a 429 raised inside pauses every caller."""
        async with self._slots:
            await self._wait_turn()
            started = self._clock.now()
            self.in_flight += 1
            try:
                yield
            except DependencyError as exc:
                if exc.rate_limited:
                    self._pause(started, exc.retry_after)
                raise
            else:
                self._strikes = 0
            finally:
                self.in_flight -= 1

    async def _wait_turn(self) -> None:
        while True:
            now = self._clock.now()
            if self._paused_until is not None and now < self._paused_until:
                await self._clock.sleep((self._paused_until - now).total_seconds())
                continue
            start = self._reserve(now)
            if start <= now:
                return
            await self._clock.sleep((start - now).total_seconds())
            if self._paused_until is None or self._clock.now() >= self._paused_until:
                return
            # A 429 came in while this call waited for its turn: wait for the pause instead.

    def _reserve(self, now: datetime) -> datetime:
        """The instant this request may start under the rate limit; books it."""
        if not self._interval:
            return now
        start = now if self._next_start is None else max(now, self._next_start)
        self._next_start = start + self._interval
        return start

    def _pause(self, started: datetime, retry_after: float | None) -> None:
        now = self._clock.now()
        # Calls that were already on the wire when the pause began are refused for the same
        # reason; only a refusal of a call sent after it means the pause was too short.
        if self._paused_at is None or started > self._paused_at:
            self._strikes += 1
        if retry_after is not None:
            wait = timedelta(seconds=retry_after)
        else:
            wait = FIRST_PAUSE * 2 ** (min(max(self._strikes, 1), 7) - 1)
        until = now + min(wait, MAX_PAUSE)
        if self._paused_until is not None and until <= self._paused_until:
            return
        self._paused_until = until
        self._paused_at = now
        if self._next_start is not None:
            self._next_start = max(self._next_start, until)
        logger.warning(
            "the model endpoint is rate limiting this worker: every model call waits %.1f s",
            (until - now).total_seconds(),
        )


class GatedReplyModel:
    """Implements :class:`chatbuffer.domain.ports.ReplyModel`: ``model``, through ``gate``."""

    def __init__(self, model: ReplyModel, gate: ModelGate) -> None:
        self._model = model
        self._gate = gate

    async def decide(self, prompt: Prompt) -> ModelDecision:
        async with self._gate.admitted():
            return await self._model.decide(prompt)


class GatedTranscriber:
    """Implements :class:`chatbuffer.domain.ports.Transcriber` through the model's ``gate``.

    Transcriptions sent to the chat endpoint with its key count against the same limits, so they
    share its gate and a 429 on either pauses both; an endpoint of their own gets a gate of its
    own. The pipeline transcribes before it asks the model, never during, so one buffer never
    holds two slots.
    """

    def __init__(self, transcriber: Transcriber, gate: ModelGate) -> None:
        self._transcriber = transcriber
        self._gate = gate

    async def transcribe(self, attachment: Attachment) -> str:
        async with self._gate.admitted():
            return await self._transcriber.transcribe(attachment)


class GatedSummarizer:
    """Implements :class:`chatbuffer.domain.ports.Summarizer` through the model's ``gate``: a
    summary is a call to the same endpoint as the replies. It is made after the buffer's reply,
    never during, so one buffer never holds two slots."""

    def __init__(self, summarizer: Summarizer, gate: ModelGate) -> None:
        self._summarizer = summarizer
        self._gate = gate

    async def summarize(self, prompt: Prompt) -> str:
        async with self._gate.admitted():
            return await self._summarizer.summarize(prompt)
