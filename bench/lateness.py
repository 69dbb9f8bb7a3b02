"""How late does processing start after a buffer's due time, with many buffers due at once?

Stores N buffers (one message each, N conversations) whose due times fall within a few seconds,
then runs the real worker (scheduler, claim, model gate, pipeline, PostgreSQL LISTEN) against
in-memory Chatwoot and model doubles (answering instantly, or after ``--model-latency-ms``), and
reports the lateness between each buffer's due time and the instant a worker claimed it, made its
first Chatwoot call, and replied. Settings are the defaults unless an option overrides one.
Run by hand:

    uv run python bench/lateness.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    uv run python bench/lateness.py --database-url sqlite:// --model-latency-ms 2000
    uv run python bench/lateness.py --spread-s 0                  # drain rate, all due at once
    uv run python bench/lateness.py --spread-s 10 --open-buffers 10000

``--spread-s 0`` makes every buffer due at the same instant, so "buffers/s" (answered buffers
over the time from that instant to the last reply) is the worker's drain rate. ``--open-buffers``
first opens that many other buffers (one message each, in other conversations, due in an hour),
so the claim runs with them present. "worker CPU" is the benchmark process's CPU time from the
first due time to the last reply, per answered buffer.

On PostgreSQL the database named in the URL is only used to create (and drop) a scratch
database; ``sqlite://`` runs on a scratch file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from chatbuffer.app import Runtime
from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, InboundMessage, ModelDecision
from chatbuffer.settings import load_settings
from chatbuffer.storage import database
from chatbuffer.testing import RecordingChatwoot, ScriptedReplyModel

#: The account of the ``--open-buffers`` conversations, apart from the measured ones.
OPEN_ACCOUNT = 2


class LatenessProbe:
    def __init__(self) -> None:
        self.lateness_ms: list[float] = []
        self.replied_at: dict[ConversationKey, datetime] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.done = asyncio.Event()
        self.expected = 0

    def event(self, name: str, key: ConversationKey, **fields: Any) -> None:
        if name == "buffer_closed":
            self.lateness_ms.append(float(fields["lateness_ms"]))
        elif name in {"attempt_failed", "buffer_failed"}:
            self.errors[str(fields.get("error"))] += 1
        elif name == "reply_sent":
            self.replied_at[key] = datetime.now(UTC)
            if len(self.replied_at) >= self.expected:
                self.done.set()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


class TimedChatwoot(RecordingChatwoot):
    """Notes when each conversation saw its first Chatwoot call (typing on, or the reply)."""

    def __init__(self) -> None:
        super().__init__()
        self.first_call: dict[ConversationKey, datetime] = {}

    def _called(self, key: ConversationKey) -> None:
        self.first_call.setdefault(key, datetime.now(UTC))

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        self._called(key)
        await super().set_typing(key, on=on)

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        self._called(key)
        return await super().send_message(
            key, content, private=private, content_attributes=content_attributes
        )


class SlowModel:
    """An instant scripted answer after a fixed delay, standing in for a real LLM's latency."""

    def __init__(self, answer: ModelDecision, delay_s: float) -> None:
        self._answer = answer
        self._delay_s = delay_s

    async def decide(self, prompt: Prompt) -> ModelDecision:  # noqa: ARG002
        await asyncio.sleep(self._delay_s)
        return self._answer


async def run(
    url: str,
    buffers: int,
    spread_s: float,
    overrides: dict[str, Any],
    model_latency_s: float,
    profile: str | None = None,
    open_buffers: int = 0,
) -> dict[str, float]:
    settings = load_settings(
        database_url=url,
        **overrides,
        openai_api_key="bench",
        chatwoot_base_url="http://127.0.0.1:9",
        chatwoot_api_token="bench",
        log_level="WARNING",
    )
    probe = LatenessProbe()
    probe.expected = buffers
    answer = ModelDecision(
        should_respond=True, content="ok", confidence=0.9, intent="bench", actions=()
    )
    chatwoot = TimedChatwoot()
    runtime = Runtime(
        settings,
        observers=[probe],
        chatwoot=chatwoot,
        model=SlowModel(answer, model_latency_s)
        if model_latency_s > 0
        else ScriptedReplyModel(lambda _prompt: answer),
    )
    # Time to store them all before the first is due, even on a busy machine.
    lead = timedelta(seconds=4 + buffers / 100)
    policy = BufferPolicy(quiet_period=lead, max_age=lead * 2, max_size=50)
    async with runtime.opened():
        store = runtime.store
        print(
            f"  worker: {settings.buffers_in_flight} buffers in flight, "
            f"{settings.ai_max_concurrency} model calls at once, "
            f"{settings.ai_requests_per_minute or 'no'} requests/minute limit, "
            f"pool {settings.database_pool_size}"
        )
        sem = asyncio.Semaphore(16)

        async def put(key: ConversationKey, mid: int, rules: BufferPolicy, at: datetime) -> None:
            async with sem:
                await store.record_incoming(
                    InboundMessage(
                        key=key,
                        chatwoot_message_id=mid,
                        content=f"message {mid}",
                        kind="text",
                        content_type="text",
                        received_at=at,
                    ),
                    rules,
                    at,
                )

        if open_buffers:
            # Not due during the run: they are only there for the claim to pass by.
            idle = BufferPolicy(
                quiet_period=timedelta(hours=1), max_age=timedelta(hours=2), max_size=50
            )
            opened_at = datetime.now(UTC)
            await asyncio.gather(
                *(
                    put(ConversationKey(OPEN_ACCOUNT, i + 1), buffers + i + 1, idle, opened_at)
                    for i in range(open_buffers)
                )
            )
            print(f"  opened {open_buffers} other buffers, due in an hour")
        t0 = datetime.now(UTC)
        step = timedelta(seconds=spread_s / buffers)
        started = time.perf_counter()
        await asyncio.gather(
            *(put(ConversationKey(1, i + 1), i + 1, policy, t0 + step * i) for i in range(buffers))
        )
        stored_s = time.perf_counter() - started
        first_due = t0 + lead
        if datetime.now(UTC) >= first_due:
            raise SystemExit("storing took longer than the lead time; use fewer buffers")
        with profiled(profile):
            async with runtime.worker_running():
                # The worker's CPU from the first due time to the last reply: no start-up, no
                # idle wait, no shutdown.
                await asyncio.sleep((first_due - datetime.now(UTC)).total_seconds())
                cpu_before = _cpu_s()
                await asyncio.wait_for(probe.done.wait(), timeout=120)
                cpu_s = _cpu_s() - cpu_before
        total_s = (max(probe.replied_at.values()) - first_due).total_seconds()
    for error, count in probe.errors.most_common(3):
        print(f"  {count} attempts failed: {error}")
    values = probe.lateness_ms

    def since_due(seen: dict[ConversationKey, datetime]) -> list[float]:
        # Buffer i got its one message at t0 + i * step, so it was due a quiet period later.
        return [
            (at - (t0 + step * (key.conversation_id - 1) + lead)) / timedelta(milliseconds=1)
            for key, at in seen.items()
        ]

    replies_ms = since_due(probe.replied_at)
    first_call_ms = since_due(chatwoot.first_call)
    return {
        "buffers": float(len(values)),
        "stored_per_s": buffers / stored_s,
        "p50_ms": statistics.median(values),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
        "call_p50_ms": statistics.median(first_call_ms),
        "call_p99_ms": percentile(first_call_ms, 99),
        "reply_p50_ms": statistics.median(replies_ms),
        "reply_p99_ms": percentile(replies_ms, 99),
        "drain_s": total_s,
        "buffers_per_s": len(probe.replied_at) / total_s,
        "cpu_ms_per_buffer": cpu_s * 1000 / len(probe.replied_at),
        "failed_attempts": float(probe.errors.total()),
    }


def run_loop(name: str) -> Callable[[Coroutine[Any, Any, dict[str, float]]], dict[str, float]]:
    if name == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """Profile the worker's run (not the set-up) into ``path``: text for .txt, else HTML."""
    if path is None:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled")
    with profiler:
        yield
    with open(path, "w") as out:
        out.write(profiler.output_text() if path.endswith(".txt") else profiler.output_html())
    print(f"  profile written to {path}")


def scratch_database(admin_url: str) -> tuple[str, Any]:
    if database.is_sqlite(admin_url):
        folder = tempfile.TemporaryDirectory(prefix="chatbuffer-bench-")
        return f"sqlite:///{folder.name}/bench.db", folder.cleanup
    name = f"chatbuffer_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(database.sync_url(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return url, drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--buffers", type=int, default=1000)
    parser.add_argument("--spread-s", type=float, default=3.0)
    parser.add_argument(
        "--concurrency", type=int, help="WORKER_CONCURRENCY (default: the setting's default)"
    )
    parser.add_argument("--ai-max-concurrency", type=int, help="AI_MAX_CONCURRENCY")
    parser.add_argument("--ai-requests-per-minute", type=int, help="AI_REQUESTS_PER_MINUTE")
    parser.add_argument("--pool-size", type=int, help="DATABASE_POOL_SIZE")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="uvloop",
        help="event loop: uvloop, as `chatbuffer worker` and `serve` run, or asyncio's own",
    )
    parser.add_argument(
        "--open-buffers",
        type=int,
        default=0,
        help="first open this many other buffers (one message each, due in an hour)",
    )
    parser.add_argument(
        "--model-latency-ms", type=float, default=0, help="simulated LLM latency per buffer"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="profile the worker with pyinstrument (.txt or .html)"
    )
    args = parser.parse_args()
    overrides = {
        name: value
        for name, value in {
            "worker_concurrency": args.concurrency,
            "ai_max_concurrency": args.ai_max_concurrency,
            "ai_requests_per_minute": args.ai_requests_per_minute,
            "database_pool_size": args.pool_size,
        }.items()
        if value is not None
    }
    print(
        f"lateness bench: {args.buffers} buffers due within {args.spread_s:.1f} s, "
        f"model latency {args.model_latency_ms:.0f} ms, {args.open_buffers} other buffers "
        f"open, {args.runs} runs, {args.loop} loop, "
        f"settings: {overrides or 'defaults'}"
    )
    for run_no in range(1, args.runs + 1):
        url, drop = scratch_database(args.database_url)
        try:
            database.migrate(url)
            result = run_loop(args.loop)(
                run(
                    url,
                    args.buffers,
                    args.spread_s,
                    overrides,
                    args.model_latency_ms / 1000,
                    args.profile,
                    args.open_buffers,
                )
            )
        finally:
            drop()
        print(
            f"run {run_no}: claim lateness p50 {result['p50_ms']:.1f} ms, "
            f"p90 {result['p90_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
            f"max {result['max_ms']:.1f} ms; due -> first Chatwoot call "
            f"p50 {result['call_p50_ms']:.1f} ms, p99 {result['call_p99_ms']:.1f} ms; "
            f"due -> reply p50 {result['reply_p50_ms']:.0f} ms, "
            f"p99 {result['reply_p99_ms']:.0f} ms; {result['buffers']:.0f} buffers answered, "
            f"the last {result['drain_s']:.2f} s after the first was due "
            f"({result['buffers_per_s']:.0f} buffers/s); "
            f"worker CPU {result['cpu_ms_per_buffer']:.1f} ms/buffer; "
            f"{result['failed_attempts']:.0f} failed attempts; "
            f"intake {result['stored_per_s']:.0f} messages/s; "
            f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
