"""How late does processing start after a buffer's due time, with many buffers due at once?

Stores N buffers (one message each, N conversations) whose due times fall within a few seconds,
then runs the real worker (scheduler, claim, pipeline, PostgreSQL LISTEN) against in-memory
Chatwoot and model doubles that answer instantly, and reports the lateness between each buffer's
due time and the instant a worker claimed it. Run by hand:

    uv run python bench/lateness.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The database named in the URL is only used to create (and drop) a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
import uuid
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


class LatenessProbe:
    def __init__(self) -> None:
        self.lateness_ms: list[float] = []
        self.replies = 0
        self.done = asyncio.Event()
        self.expected = 0

    def event(self, name: str, key: ConversationKey, **fields: Any) -> None:  # noqa: ARG002
        if name == "buffer_closed":
            self.lateness_ms.append(float(fields["lateness_ms"]))
        elif name == "reply_sent":
            self.replies += 1
            if self.replies >= self.expected:
                self.done.set()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


class SlowModel:
    """An instant scripted answer after a fixed delay, standing in for a real LLM's latency."""

    def __init__(self, answer: ModelDecision, delay_s: float) -> None:
        self._answer = answer
        self._delay_s = delay_s

    async def decide(self, prompt: Prompt) -> ModelDecision:  # noqa: ARG002
        await asyncio.sleep(self._delay_s)
        return self._answer


async def run(
    url: str, buffers: int, spread_s: float, concurrency: int, model_latency_s: float
) -> dict[str, float]:
    settings = load_settings(
        database_url=url,
        worker_concurrency=concurrency,
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
    runtime = Runtime(
        settings,
        observers=[probe],
        chatwoot=RecordingChatwoot(),
        model=SlowModel(answer, model_latency_s)
        if model_latency_s > 0
        else ScriptedReplyModel(lambda _prompt: answer),
    )
    lead = timedelta(seconds=4 + buffers / 500)  # time to store them all before the first is due
    policy = BufferPolicy(quiet_period=lead, max_age=lead * 2, max_size=50)
    async with runtime.opened():
        store = runtime.store
        t0 = datetime.now(UTC)
        step = timedelta(seconds=spread_s / buffers)
        started = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            async with sem:
                await store.record_incoming(
                    InboundMessage(
                        key=ConversationKey(1, i + 1),
                        chatwoot_message_id=i + 1,
                        content=f"message {i}",
                        kind="text",
                        content_type="text",
                        received_at=t0,
                    ),
                    policy,
                    t0 + step * i,
                )

        await asyncio.gather(*(put(i) for i in range(buffers)))
        stored_s = time.perf_counter() - started
        first_due = t0 + lead
        if datetime.now(UTC) >= first_due:
            raise SystemExit("storing took longer than the lead time; use fewer buffers")
        async with runtime.worker_running():
            await asyncio.wait_for(probe.done.wait(), timeout=120)
        total_s = (datetime.now(UTC) - first_due).total_seconds()
    values = probe.lateness_ms
    return {
        "buffers": float(len(values)),
        "stored_per_s": buffers / stored_s,
        "p50_ms": statistics.median(values),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
        "drain_s": total_s,
    }


def scratch_database(admin_url: str) -> tuple[str, Any]:
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
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--model-latency-ms", type=float, default=0, help="simulated LLM latency per buffer"
    )
    args = parser.parse_args()
    print(
        f"lateness bench: {args.buffers} buffers due within {args.spread_s:.1f} s, "
        f"worker concurrency {args.concurrency}, model latency {args.model_latency_ms:.0f} ms, "
        f"{args.runs} runs"
    )
    for run_no in range(1, args.runs + 1):
        url, drop = scratch_database(args.database_url)
        try:
            database.migrate(url)
            result = asyncio.run(
                run(
                    url,
                    args.buffers,
                    args.spread_s,
                    args.concurrency,
                    args.model_latency_ms / 1000,
                )
            )
        finally:
            drop()
        print(
            f"run {run_no}: p50 {result['p50_ms']:.1f} ms, p90 {result['p90_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
            f"{result['buffers']:.0f} buffers answered {result['drain_s']:.2f} s after the first "
            f"was due; intake {result['stored_per_s']:.0f} messages/s; "
            f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
