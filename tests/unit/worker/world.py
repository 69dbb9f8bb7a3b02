"""A worker's whole world in memory: ``MemoryStore``, ``FakeClock``, recording Chatwoot, a model
that can be held mid-answer. Nothing here waits on real time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, InboundMessage, ModelDecision
from chatbuffer.domain.ports import ClaimedJob
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.flags import CachedControls
from chatbuffer.testing import (
    FakeClock,
    MemoryControls,
    MemoryStore,
    RecordingChatwoot,
    RecordingObserver,
)
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from chatbuffer.worker.scheduler import Scheduler, SchedulerConfig
from chatbuffer.worker.waker import Waker

KEY = ConversationKey(3, 77)
QUIET = timedelta(seconds=30)
POLICY = BufferPolicy(quiet_period=QUIET, max_age=timedelta(seconds=300), max_size=50)
LEASE = timedelta(seconds=10)
REPLY = "Your order 4411 ships today."


def answer(confidence: float = 0.9) -> ModelDecision:
    return ModelDecision(
        should_respond=True, content=REPLY, confidence=confidence, intent="order_status"
    )


def burst_lines(prompt: Prompt) -> list[str]:
    """The burst's messages as the model saw them."""
    combined = prompt.user.split("Combined message content:\n", 1)[1].split("\n\n", 1)[0]
    return [line[2:] for line in combined.splitlines() if line.startswith("- ")]


async def settle() -> None:
    """Let every task that can run, run (the fakes never wait on I/O)."""
    for _ in range(50):
        await asyncio.sleep(0)


@dataclass
class Model:
    """A reply model answering from ``answers`` in turn (the last one repeats); while ``held``
    it stays mid-answer until ``release()``."""

    answers: list[ModelDecision | Exception] = field(default_factory=lambda: [answer()])
    prompts: list[Prompt] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def decide(self, prompt: Prompt) -> ModelDecision:
        self.prompts.append(prompt)
        await self.gate.wait()
        reply = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


class World:
    def __init__(
        self,
        *,
        concurrency: int = 4,
        wake_on_finish: bool = True,
        reply_max_chars: int = 4096,
        pause_per_char: timedelta = timedelta(milliseconds=1),
        pause_max: timedelta = timedelta(seconds=3),
    ) -> None:
        self.clock = FakeClock()
        self.control_rows = MemoryControls()
        self.store = MemoryStore()
        self.chatwoot = RecordingChatwoot()
        self.observer = RecordingObserver()
        self.model = Model()
        self.waker = Waker(self.clock)
        self.concurrency = concurrency
        self.wake_on_finish = wake_on_finish
        self.pipeline = Pipeline(
            history=self.store,
            ledger=self.store,
            flags=CachedControls(self.control_rows, self.clock),
            chatwoot=self.chatwoot,
            model=self.model,
            clock=self.clock,
            observer=self.observer,
            config=PipelineConfig(
                quality_threshold=0.7,
                typing_enabled=True,
                history_limit=10,
                retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
                policy=POLICY,
                reply_max_chars=reply_max_chars,
                pause_per_char=pause_per_char,
                pause_max=pause_max,
            ),
        )

    async def say(
        self,
        *texts: str,
        every: float = 2.0,
        key: ConversationKey = KEY,
        inbox_id: int | None = None,
    ) -> None:
        """The contact sends ``texts``, ``every`` seconds apart (the clock ends after the last),
        in the inbox ``inbox_id`` if given."""
        for i, text in enumerate(texts):
            if i:
                self.clock.advance(every)
            mid = len(self.store.messages) + 1
            await self.store.record_incoming(
                InboundMessage(
                    key=key,
                    chatwoot_message_id=mid,
                    content=text,
                    kind="text",
                    content_type="text",
                    received_at=self.clock.now(),
                    conversation={} if inbox_id is None else {"inbox_id": inbox_id},
                ),
                POLICY,
                self.clock.now(),
            )

    async def due(self) -> None:
        """The contact falls quiet: the burst is due, and a running worker takes it."""
        self.clock.advance(QUIET)
        await settle()

    async def claim(self, owner: str = "w1") -> ClaimedJob:
        [job] = await self.store.claim_due(self.clock.now(), owner, LEASE, 10)
        return job

    def statuses(self) -> list[str]:
        """The conversation's buffers' statuses, oldest first."""
        return [b.status for b in sorted(self.store.buffers.values(), key=lambda b: b.seq)]

    def scheduler(self, owner: str = "w1") -> Scheduler:
        return Scheduler(
            queue=self.store,
            pipeline=self.pipeline,
            clock=self.clock,
            waker=self.waker,
            config=SchedulerConfig(
                concurrency=self.concurrency,
                lease=LEASE,
                # Longer than any wait in these tests: every wake-up must come from a due time.
                sweep_interval=timedelta(minutes=10),
                shutdown_grace=timedelta(seconds=20),
                wake_on_finish=self.wake_on_finish,
            ),
            owner=owner,
        )

    @asynccontextmanager
    async def running(self, owner: str = "w1") -> AsyncIterator[Running]:
        """A scheduler running with the store's wake-ups, as ``app.worker_running`` wires it."""
        scheduler = self.scheduler(owner)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        listener = asyncio.create_task(self.store.listen(self.waker.poke))
        running = Running(task, stop, self.waker)
        await settle()
        try:
            yield running
        finally:
            listener.cancel()
            running.stop()
            for _ in range(5):  # past any grace period, also when a test failed half-way
                await settle()
                if task.done():
                    break
                self.clock.advance(timedelta(minutes=1))
            await asyncio.gather(task, listener, return_exceptions=True)


@dataclass
class Running:
    task: asyncio.Task[None]
    stop_event: asyncio.Event
    waker: Waker

    def stop(self) -> None:
        self.stop_event.set()
        self.waker.poke()
