"""The model gate on a fake clock: the concurrency cap, the request rate, the pause after a 429."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.model import Attachment, ModelDecision
from chatbuffer.errors import ModelError, TranscriptionError
from chatbuffer.testing import FakeClock
from chatbuffer.worker.model_gate import GatedReplyModel, GatedTranscriber, ModelGate

PROMPT = Prompt(system="s", user="u")
ANSWER = ModelDecision(should_respond=True, content="ok", confidence=0.9, intent="t", actions=())
VOICE = Attachment(file_type="audio", data_url="http://chatwoot.test/voice.ogg")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class HeldModel:
    """A model whose calls run until the test lets them answer; records when each started."""

    clock: FakeClock
    started: list[datetime] = field(default_factory=list)
    running: int = 0
    most_running: int = 0
    held: bool = True
    released: asyncio.Event = field(default_factory=asyncio.Event)
    fail_next: list[Exception] = field(default_factory=list)

    async def decide(self, prompt: Prompt) -> ModelDecision:
        self.started.append(self.clock.now())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.held:
                await self.released.wait()
            if self.fail_next:
                raise self.fail_next.pop(0)
            return ANSWER
        finally:
            self.running -= 1

    async def transcribe(self, attachment: Attachment) -> str:
        self.started.append(self.clock.now())
        if self.fail_next:
            raise self.fail_next.pop(0)
        return "hello"


def rate_limited(retry_after: float | None) -> ModelError:
    return ModelError("the model endpoint answered 429", retry_after=retry_after, rate_limited=True)


async def test_no_more_calls_run_at_once_than_the_limit() -> None:
    clock = FakeClock()
    inner = HeldModel(clock)
    model = GatedReplyModel(inner, ModelGate(clock, max_concurrency=3))
    calls = [asyncio.create_task(model.decide(PROMPT)) for _ in range(10)]
    await settle()
    assert (len(inner.started), inner.running) == (3, 3)
    inner.released.set()
    answers = await asyncio.gather(*calls)
    assert answers == [ANSWER] * 10
    assert inner.most_running == 3


async def test_requests_per_minute_spaces_the_calls() -> None:
    clock = FakeClock()
    t0 = clock.now()
    inner = HeldModel(clock, held=False)
    model = GatedReplyModel(inner, ModelGate(clock, max_concurrency=100, requests_per_minute=60))
    calls = [asyncio.create_task(model.decide(PROMPT)) for _ in range(5)]
    for _ in range(10):
        await settle()
        clock.advance(0.5)
    await asyncio.gather(*calls)
    assert [(s - t0).total_seconds() for s in inner.started] == [0, 1, 2, 3, 4]


async def test_no_minute_holds_more_requests_than_the_limit() -> None:
    clock = FakeClock()
    inner = HeldModel(clock, held=False)
    model = GatedReplyModel(inner, ModelGate(clock, max_concurrency=500, requests_per_minute=600))
    calls = [asyncio.create_task(model.decide(PROMPT)) for _ in range(1_500)]
    for _ in range(3_000):
        await settle()
        if len(inner.started) == len(calls):
            break
        clock.advance(0.05)
    await asyncio.gather(*calls)
    starts = inner.started
    # Evenly spaced, a tenth of a second apart: never more than 600 in any minute, nor a burst
    # for a provider that counts per second.
    assert all(b - a >= timedelta(seconds=0.1) for a, b in itertools.pairwise(starts))
    assert all(starts[i + 600] - starts[i] >= timedelta(minutes=1) for i in range(900))
    assert starts[-1] - starts[0] < timedelta(minutes=2.6)


async def test_a_429_holds_every_other_call_until_its_retry_after() -> None:
    clock = FakeClock()
    t0 = clock.now()
    inner = HeldModel(clock, held=False, fail_next=[rate_limited(3)])
    gate = ModelGate(clock, max_concurrency=10)
    model = GatedReplyModel(inner, gate)
    with pytest.raises(ModelError) as refused:
        await model.decide(PROMPT)
    # The refusal itself reaches the pipeline, whose retry policy reschedules that buffer.
    assert refused.value.retry_after == 3
    others = [asyncio.create_task(model.decide(PROMPT)) for _ in range(4)]
    await settle()
    clock.advance(2.9)
    await settle()
    assert len(inner.started) == 1
    assert not any(call.done() for call in others)
    clock.advance(0.1)
    await asyncio.gather(*others)
    assert inner.started[1:] == [t0 + timedelta(seconds=3)] * 4


async def test_a_429_on_a_transcription_pauses_the_replies_too() -> None:
    clock = FakeClock()
    inner = HeldModel(clock, held=False)
    gate = ModelGate(clock, max_concurrency=10)
    inner.fail_next.append(
        TranscriptionError("the transcription endpoint answered 429", rate_limited=True)
    )
    with pytest.raises(TranscriptionError):
        await GatedTranscriber(inner, gate).transcribe(VOICE)
    reply = asyncio.create_task(GatedReplyModel(inner, gate).decide(PROMPT))
    await settle()
    assert not reply.done()
    clock.advance(1)  # no Retry-After: the first pause is one second
    assert await reply == ANSWER


async def test_other_failures_do_not_pause() -> None:
    clock = FakeClock()
    inner = HeldModel(clock, held=False, fail_next=[ModelError("answered 503", retry_after=30)])
    model = GatedReplyModel(inner, ModelGate(clock, max_concurrency=10))
    with pytest.raises(ModelError):
        await model.decide(PROMPT)
    assert await asyncio.wait_for(model.decide(PROMPT), timeout=1) == ANSWER


async def test_the_pause_doubles_while_refusals_keep_coming_but_one_wave_counts_once() -> None:
    clock = FakeClock()
    t0 = clock.now()
    inner = HeldModel(clock)
    gate = ModelGate(clock, max_concurrency=10)
    model = GatedReplyModel(inner, gate)
    # Three calls are on the wire when the provider starts refusing: one pause, not three.
    wave = [asyncio.create_task(model.decide(PROMPT)) for _ in range(3)]
    await settle()
    inner.fail_next = [rate_limited(None) for _ in wave]
    inner.released.set()
    await asyncio.gather(*wave, return_exceptions=True)
    assert gate.paused_until == t0 + timedelta(seconds=1)
    # A call sent after that pause is refused too: the pause was too short, now two seconds.
    clock.advance(1)
    inner.fail_next = [rate_limited(None)]
    with pytest.raises(ModelError):
        await model.decide(PROMPT)
    assert gate.paused_until == t0 + timedelta(seconds=3)
    # An answer resets it.
    clock.advance(2)
    assert await model.decide(PROMPT) == ANSWER
    inner.fail_next = [rate_limited(None)]
    with pytest.raises(ModelError):
        await model.decide(PROMPT)
    assert gate.paused_until == t0 + timedelta(seconds=4)


async def test_a_cancelled_call_gives_its_slot_back() -> None:
    clock = FakeClock()
    inner = HeldModel(clock)
    gate = ModelGate(clock, max_concurrency=1)
    model = GatedReplyModel(inner, gate)
    first = asyncio.create_task(model.decide(PROMPT))
    second = asyncio.create_task(model.decide(PROMPT))
    await settle()
    assert (len(inner.started), gate.in_flight) == (1, 1)
    first.cancel()  # e.g. its worker lost the lease, or is shutting down
    await settle()
    assert (len(inner.started), gate.in_flight) == (2, 1)
    inner.released.set()
    assert await second == ANSWER
    assert gate.in_flight == 0


async def test_a_call_cancelled_while_waiting_out_a_pause_gives_its_slot_back() -> None:
    clock = FakeClock()
    inner = HeldModel(clock, held=False, fail_next=[rate_limited(5)])
    gate = ModelGate(clock, max_concurrency=1)
    model = GatedReplyModel(inner, gate)
    with pytest.raises(ModelError):
        await model.decide(PROMPT)
    waiting = asyncio.create_task(model.decide(PROMPT))  # holds the one slot through the pause
    queued = asyncio.create_task(model.decide(PROMPT))
    await settle()
    waiting.cancel()
    await settle()
    clock.advance(5)
    assert await queued == ANSWER
    assert waiting.cancelled()
    assert len(inner.started) == 2


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        ModelGate(FakeClock(), max_concurrency=0)
    with pytest.raises(ValueError, match="requests_per_minute"):
        ModelGate(FakeClock(), max_concurrency=1, requests_per_minute=0)
