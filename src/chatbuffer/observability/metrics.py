"""Prometheus metrics: one registry per process, fed by an observer of buffer events and by the
measured ports (``observability.measured``), read by ``GET /metrics``.

Every metric is named in docs/observability.md. Label values come from fixed sets (the free text
of an ignore or hand-off reason is mapped to a slug first), so a scrape never grows with traffic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from chatbuffer.domain.buffer import BufferPolicy, BufferWindow, close_reason
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import Clock, EventName

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

CLOSE_REASONS = ("quiet", "max_age", "max_size", "control_word", "cancelled")
HANDOFF_REASONS = (
    "low_confidence",
    "empty_reply",
    "model_action",
    "control_word",
    "failed",
    "stale",
    "resumed",
    "other",
)

#: How long the database gauges are reused: every replica may be scraped every few seconds, and
#: two counts per scrape per replica are cheap, but not free under a scrape storm.
GAUGE_CACHE = timedelta(seconds=2)
#: A slow database must not hang the scrape; the gauges are then left out of that one.
GAUGE_TIMEOUT_S = 1.0

#: Which slug an intake's ignore reason (``intake.webhook``) is counted under.
_IGNORED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), slug)
    for pattern, slug in [
        (r"^event .* is not handled$", "unhandled_event"),
        (r"^event carries no account id$", "no_account"),
        (r"^account is not served", "account_mismatch"),
        (r"^conversation change needs no action$", "conversation_change"),
        (r"^the bot's own reply$", "own_reply"),
        (r"^private note$", "private_note"),
        (r"^outgoing message$", "outgoing"),
        (r"^message update without attachments$", "update_without_attachments"),
        (r"^attachments$", "unknown_message"),
        (r"^conversation is ", "conversation_not_active"),
        (r"^a human agent is handling", "human_pause"),
        (r"^conversation became ", "status_unchanged"),
        (r" message$", "message_type"),
    ]
)


def ignored_slug(reason: str) -> str:
    """``ignored_<slug>`` for an ignore reason; reasons this version does not know are
    ``ignored_other`` (the log line still has the full text)."""
    for pattern, slug in _IGNORED:
        if pattern.search(reason):
            return f"ignored_{slug}"
    return "ignored_other"


def handoff_slug(reason: str | None) -> str:
    if reason is None:
        return "resumed"
    if reason.startswith("confidence"):
        return "low_confidence"
    if reason.startswith("model wanted to respond but wrote nothing"):
        return "empty_reply"
    if reason.startswith("the model asked for a human"):
        return "model_action"
    if reason == "control_word":
        return "control_word"
    if reason == "failed":
        return "failed"
    if reason.startswith("stale"):
        return "stale"
    return "other"


class DatabaseGauges(Collector):
    """``chatbuffer_open_buffers`` and ``chatbuffer_due_buffers`` as the database counts them, so
    every replica reports the same truth; ``refresh`` (awaited before each scrape) reuses a
    count younger than ``GAUGE_CACHE``."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._read: Callable[[datetime], Awaitable[tuple[int, int]]] | None = None
        self._values: tuple[int, int] | None = None
        self._read_at: datetime | None = None

    def connect(self, read: Callable[[datetime], Awaitable[tuple[int, int]]] | None) -> None:
        self._read = read
        self._values = self._read_at = None

    async def refresh(self) -> None:
        import asyncio

        now = self._clock.now()
        if self._read is None or (self._read_at is not None and now - self._read_at < GAUGE_CACHE):
            return
        try:
            self._values = await asyncio.wait_for(self._read(now), GAUGE_TIMEOUT_S)
        except Exception as exc:
            logger.warning("could not count the buffers for /metrics: %s", type(exc).__name__)
            self._values = None
        self._read_at = now

    def collect(self) -> Iterator[Metric]:
        if self._values is None:
            return
        open_, due = self._values
        yield GaugeMetricFamily(
            "chatbuffer_open_buffers", "Buffers still collecting messages.", value=open_
        )
        yield GaugeMetricFamily(
            "chatbuffer_due_buffers", "Closed buffers waiting for a worker.", value=due
        )


class Metrics:
    """The process's metrics, in a registry of their own (several runtimes can share a test)."""

    def __init__(self, clock: Clock) -> None:
        self.registry = r = CollectorRegistry()
        self.messages_received = Counter(
            "chatbuffer_messages_received",
            "Webhook deliveries by what became of them.",
            ["outcome"],
            registry=r,
        )
        self.credential_refused = Counter(
            "chatbuffer_credential_refused",
            "Calls refused for their credentials (401/403), by service: chatwoot or model.",
            ["service"],
            registry=r,
        )
        self.buffers_closed = Counter(
            "chatbuffer_buffers_closed",
            "Buffers closed, by why they closed.",
            ["reason"],
            registry=r,
        )
        self.buffer_messages = Histogram(
            "chatbuffer_buffer_messages",
            "Messages in a buffer when it closed.",
            buckets=(1, 2, 3, 5, 8, 13, 20, 30, 50, 100),
            registry=r,
        )
        self.buffer_duration = Histogram(
            "chatbuffer_buffer_duration_seconds",
            "From a buffer's first message to its closing.",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 120, 300, 600),
            registry=r,
        )
        self.lateness = Histogram(
            "chatbuffer_processing_lateness_seconds",
            "From a buffer's closing to a worker taking it.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.processing = Histogram(
            "chatbuffer_buffer_processing_seconds",
            "From a worker taking a buffer to its outcome (reply, hand-off, silence, failure).",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
            registry=r,
        )
        self.answer_delay = Histogram(
            "chatbuffer_answer_delay_seconds",
            "From a buffer's closing to its outcome, on its first attempt: the seed's "
            "processing latency after the buffer timeout.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 20, 30, 60),
            registry=r,
        )
        self.llm_duration = Histogram(
            "chatbuffer_llm_request_duration_seconds",
            "One model request, from sending to the parsed answer.",
            ["outcome"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
            registry=r,
        )
        self.llm_confidence = Histogram(
            "chatbuffer_llm_confidence",
            "The confidence the model gave its answer.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
            registry=r,
        )
        self.llm_tokens = Counter(
            "chatbuffer_llm_tokens", "Tokens the model endpoint counted.", ["kind"], registry=r
        )
        self.chatwoot_duration = Histogram(
            "chatbuffer_chatwoot_request_duration_seconds",
            "One Chatwoot API call.",
            ["endpoint", "status"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.replies_sent = Counter(
            "chatbuffer_replies_sent", "Public replies posted to Chatwoot.", registry=r
        )
        self.handoffs = Counter(
            "chatbuffer_handoffs", "Conversations handed to a human.", ["reason"], registry=r
        )
        self.dead_letters = Counter(
            "chatbuffer_dead_letters",
            "Buffers that failed for good (for an operator to replay).",
            registry=r,
        )
        self.db_duration = Histogram(
            "chatbuffer_db_statement_duration_seconds",
            "One store operation (a port method: one transaction or statement).",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.gauges = DatabaseGauges(clock)
        r.register(self.gauges)
        # Zeros from the start: rate() and ratios need the series before the first event.
        for outcome in ("buffered", "duplicate", "rejected"):
            self.messages_received.labels(outcome)
        for reason in CLOSE_REASONS:
            self.buffers_closed.labels(reason)
        for reason in HANDOFF_REASONS:
            self.handoffs.labels(reason)
        for kind in ("prompt", "completion"):
            self.llm_tokens.labels(kind)

    async def render(self) -> bytes:
        await self.gauges.refresh()
        return generate_latest(self.registry)


class MetricsObserver:
    """Counts buffer events (``domain.ports.Observer``)."""

    def __init__(self, metrics: Metrics, policy: BufferPolicy) -> None:
        self._m = metrics
        self._policy = policy

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None:  # noqa: ARG002
        m = self._m
        if name == "buffer_closed":
            # A retry closes nothing: its buffer was counted on its first attempt.
            if fields.get("attempt", 1) != 1 or not fields.get("messages"):
                return
            m.buffer_messages.observe(fields["messages"])
            m.lateness.observe(max(0.0, fields.get("lateness_ms", 0.0) / 1000))
            first, last, due = (
                fields.get("first_message_at"),
                fields.get("last_message_at"),
                fields.get("scheduled_for"),
            )
            if isinstance(first, datetime) and isinstance(due, datetime):
                m.buffer_duration.observe(max(0.0, (due - first).total_seconds()))
            reason = fields.get("close_reason")
            if reason is None and isinstance(first, datetime) and isinstance(last, datetime):
                window = BufferWindow(first, last, fields["messages"])
                reason = close_reason(window, due or last, self._policy)
            m.buffers_closed.labels(reason or "quiet").inc()
        elif name == "buffer_cancelled":
            m.buffers_closed.labels("cancelled").inc(fields.get("buffers", 1))
        elif name == "reply_sent":
            m.replies_sent.inc()
        elif name == "handoff":
            m.handoffs.labels(handoff_slug(fields.get("reason"))).inc()
        elif name == "buffer_failed":
            m.dead_letters.inc()


def seconds_between(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


__all__ = [
    "CONTENT_TYPE",
    "Metrics",
    "MetricsObserver",
    "handoff_slug",
    "ignored_slug",
    "seconds_between",
]
