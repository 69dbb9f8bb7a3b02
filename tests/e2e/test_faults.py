"""Fault injection: whatever breaks, no accepted message is lost and no burst is answered twice.

Each case runs the real processes on PostgreSQL (a scratch database of its own, or a private
cluster when the database itself is restarted), breaks one thing on purpose — a process killed
with SIGKILL, the database restarted, Chatwoot or the model failing, slow, or answering garbage,
webhooks repeated or reordered, the contact writing while the reply is written — and ends on the
same check (``tests/e2e/invariants.py``): every accepted message stored once, every burst answered
once or handed to a human with a private note, no reply sent twice.

The sender here plays Chatwoot (or a proxy in front of several replicas): it signs each delivery
and, like Chatwoot's webhook job, retries one that failed until the service answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import create_engine, select

from chatbuffer.simulator import payloads
from chatbuffer.simulator.chatwoot import RecordedRequest
from chatbuffer.simulator.model import Script, support_agent
from chatbuffer.storage import database
from chatbuffer.storage.tables import buffer_processing_jobs
from tests.conftest import scratch_postgres
from tests.e2e.conftest import (
    ACCOUNT,
    REPLY_BOUND_S,
    SECRET,
    WINDOW_MS,
    Service,
    Simulators,
    Worker,
    World,
    free_port,
    simulators,
    wait_until,
)
from tests.e2e.invariants import MessageRef, Verdict, assert_invariants
from tests.e2e.private_postgres import private_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

#: How long a retrying sender keeps trying one delivery before the case fails.
DELIVERY_DEADLINE_S = 60.0
#: Generous: a retried burst costs the window, a back-off of 2 s and the failed attempt itself.
RETRIED_REPLY_BOUND_S = REPLY_BOUND_S + 8


# -- harness -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    message_id: int
    replica: int  # index into Sender.urls
    outcome: str  # "200", "500", ... or the transport error's name


@dataclass
class Sender:
    """Delivers signed ``message_created`` webhooks and retries each until one replica says 200.

    ``via`` picks the replica tried first; a failure (no answer, a dropped connection, a 5xx)
    moves on to the next one, as a load balancer in front of the replicas would.
    """

    urls: list[str]
    client: httpx2.AsyncClient
    accepted: set[MessageRef] = field(default_factory=set)
    attempts: list[Attempt] = field(default_factory=list)
    #: First attempts sent only half-way, waiting for ``release``.
    holding: int = 0
    next_id: int = 7000

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(a.outcome for a in self.attempts)

    async def say(
        self,
        conversation: int,
        text: str,
        *,
        message_id: int | None = None,
        via: int = 0,
        release: asyncio.Event | None = None,
    ) -> int:
        """The contact writes ``text``; returns once the service has accepted it.

        With ``release``, the first attempt sends half of the body and the rest only once
        ``release`` is set: a request the replica is in the middle of reading.
        """
        if message_id is None:
            self.next_id += 1
            message_id = self.next_id
        body = payloads.incoming_text(
            account_id=ACCOUNT,
            conversation_id=conversation,
            message_id=message_id,
            content=text,
            created_at=datetime.now(UTC),
        )
        raw = json.dumps(body, separators=(",", ":")).encode()
        deadline = time.monotonic() + DELIVERY_DEADLINE_S
        replica = via
        while True:
            index = replica % len(self.urls)
            headers = payloads.sign(SECRET, raw, int(time.time()))
            content: bytes | AsyncIterator[bytes] = raw
            if release is not None and replica == via:
                content = self._held(raw, release)
            try:
                response = await self.client.post(
                    f"{self.urls[index]}/webhooks/chatwoot", content=content, headers=headers
                )
                outcome = str(response.status_code)
            except httpx2.HTTPError as exc:
                outcome = type(exc).__name__
            self.attempts.append(Attempt(message_id, index, outcome))
            if outcome == "200":
                self.accepted.add((conversation, message_id))
                return message_id
            if outcome.startswith("4"):
                raise AssertionError(f"delivery of {message_id} refused for good: {outcome}")
            if time.monotonic() > deadline:
                raise AssertionError(f"message {message_id} not accepted in time: {outcome}")
            replica += 1
            await asyncio.sleep(0.1)

    async def _held(self, raw: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
        yield raw[: len(raw) // 2]
        self.holding += 1
        await release.wait()
        yield raw[len(raw) // 2 :]


class TimedRequests(list[RecordedRequest]):
    """The Chatwoot simulator's request log, with the arrival time of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    def append(self, request: RecordedRequest) -> None:
        self.arrived.append(time.monotonic())
        super().append(request)


@dataclass
class Rig:
    """The simulators, the service's database and a retrying sender, for one case."""

    sims: Simulators
    database_url: str
    sender: Sender
    tmp_path: Path

    def env(self, **overrides: str) -> dict[str, str]:
        return self.sims.service_env(self.database_url, **overrides)

    def world(self, service: Service) -> World:
        return self.sims.world(service)

    def replies(self, conversation: int) -> list[dict[str, Any]]:
        return self.sims.chatwoot.replies(ACCOUNT, conversation)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        return await wait_until(condition, timeout_s)

    async def wait_for_reply(self, conversation: int, timeout_s: float) -> bool:
        return await self.wait_for(lambda: bool(self.replies(conversation)), timeout_s)

    async def check(self, settle_timeout_s: float = 30.0) -> Verdict:
        return await assert_invariants(
            self.database_url,
            self.sims.chatwoot,
            self.sender.accepted,
            settle_timeout_s=settle_timeout_s,
        )


@contextlib.asynccontextmanager
async def rig(
    database_url: str, tmp_path: Path, *, ports: list[int], model_script: Script | None = None
) -> AsyncIterator[Rig]:
    """Simulators whose webhook echoes go to ``ports[0]``, and a sender over ``ports``."""
    async with (
        simulators(ports[0], model_script=model_script) as sims,
        httpx2.AsyncClient(trust_env=False, timeout=5.0) as client,
    ):
        sender = Sender([f"http://127.0.0.1:{p}" for p in ports], client)
        yield Rig(sims, database_url, sender, tmp_path)


@contextlib.asynccontextmanager
async def serving(r: Rig, port: int, **env: str) -> AsyncIterator[Service]:
    """``chatbuffer serve`` (api and worker in one process) on ``port``."""
    service = Service(env=r.env(**env), port=port, log=r.tmp_path / f"serve-{port}.log")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def single_service(
    database_url: str, tmp_path: Path, *, model_script: Script | None = None, **env: str
) -> AsyncIterator[tuple[Rig, Service]]:
    port = free_port()
    async with (
        rig(database_url, tmp_path, ports=[port], model_script=model_script) as r,
        serving(r, port, **env) as service,
    ):
        yield r, service


def post_times(requests: TimedRequests, suffix: str) -> list[float]:
    return [
        at
        for request, at in zip(requests, requests.arrived, strict=True)
        if request.method == "POST" and request.path.endswith(suffix)
    ]


def latest_owner(log: Path) -> str | None:
    """The lease owner name a process logged when its worker last started."""
    found = re.findall(r"worker (\S+) started", log.read_text(errors="replace"))
    return found[-1] if found else None


def lease_owner(database_url: str) -> str | None:
    """The owner of the one running job (blocking)."""
    engine = create_engine(database.sync_url(database_url))
    try:
        with engine.connect() as conn:
            owners = conn.scalars(
                select(buffer_processing_jobs.c.lease_owner).where(
                    buffer_processing_jobs.c.status == "running"
                )
            ).all()
    finally:
        engine.dispose()
    return owners[0] if len(owners) == 1 else None


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """A new, migrated database on the shared PostgreSQL, dropped after the case."""
    with scratch_postgres("faults") as scratch:
        database.migrate(scratch.url)
        yield scratch.url


@pytest.fixture(autouse=True)
def show_logs_on_failure(tmp_path: Path) -> Iterator[None]:
    """Print the processes' logs after the case; pytest shows them only if it failed."""
    yield
    for log in sorted(tmp_path.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"==== {log.name} (last 80 lines)")
        print("\n".join(lines[-80:]))


# -- processes killed --------------------------------------------------------------------------


async def test_a_worker_killed_while_the_model_writes_is_taken_over_and_answers_once(
    scratch_db: str, tmp_path: Path
) -> None:
    lease_ms = 2000
    port = free_port()
    async with rig(scratch_db, tmp_path, ports=[port]) as r:
        env = r.env(WORKER_LEASE_MS=str(lease_ms))
        # Two workers: ``serve`` (which also takes the webhooks) and a ``worker``.
        serve = Service(env=env, port=port, log=tmp_path / "serve.log")
        worker = Worker(env, tmp_path / "worker.log")
        try:
            await asyncio.gather(serve.start(), worker.start())
            processes: dict[str | None, Service | Worker] = {
                latest_owner(serve.log): serve,
                worker.owner: worker,
            }
            r.sims.model.delay_next(6)  # the model is still writing when its worker dies
            await r.sender.say(110, "my order 1101")
            await r.sender.say(110, "still nothing arrived")
            assert await r.wait_for(lambda: bool(r.sims.model.requests), REPLY_BOUND_S)
            holder = processes[await asyncio.to_thread(lease_owner, scratch_db)]
            holder.kill()
            killed_at = time.monotonic()
            # The killed process comes back at once; either worker may take the buffer over,
            # but only once the dead one's lease has run out.
            restart = asyncio.create_task(holder.start())
            assert await r.wait_for_reply(110, lease_ms / 1000 + 10)
            taken_over_s = time.monotonic() - killed_at
            await restart
            verdict = await r.check()
        finally:
            await worker.stop()
            await serve.stop()
    print(
        f"killed {type(holder).__name__}; answered {taken_over_s:.2f} s later (lease {lease_ms} ms)"
    )
    [burst] = verdict.bursts
    assert burst.attempts == 2, burst
    assert len(r.sims.model.requests) == 2
    [reply] = verdict.replies.values()
    assert "#1101" in reply["content"]
    assert World.burst_lines(r.world(serve).prompts()[-1]) == [
        "my order 1101",
        "still nothing arrived",
    ]


async def test_an_api_killed_mid_request_loses_nothing_and_doubles_nothing(
    scratch_db: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    conversations = range(201, 209)
    # Sender replica 0 is ``serve`` (webhooks and the worker), which survives; replica 1 is an
    # ``api`` process, SIGKILLed while deliveries to it are in flight. Webhook echoes of the
    # bot's replies go to the survivor.
    async with rig(scratch_db, tmp_path, ports=ports) as r:
        serve = Service(env=r.env(), port=ports[0], log=tmp_path / "serve.log")
        api = Service(env=r.env(), port=ports[1], log=tmp_path / "api.log", command="api")
        release = asyncio.Event()
        held = {201, 202}  # their third message is half-sent to the api when it dies
        raced = {203, 204}  # their first message reaches both replicas at once
        try:
            await asyncio.gather(serve.start(), api.start())

            async def contact(conversation: int) -> None:
                await asyncio.sleep((conversation % 4) * 0.03)
                for n in range(5):
                    text = f"line {n} of order {conversation}00"
                    if n == 0 and conversation in raced:
                        # A retry racing the original delivery, on the other replica.
                        message_id = r.sender.next_id = r.sender.next_id + 1
                        await asyncio.gather(
                            *(
                                r.sender.say(conversation, text, message_id=message_id, via=v)
                                for v in (0, 1)
                            )
                        )
                    else:
                        await r.sender.say(
                            conversation,
                            text,
                            via=1 - n % 2,
                            release=release if n == 2 and conversation in held else None,
                        )
                    await asyncio.sleep(0.12)

            contacts = asyncio.gather(*(contact(c) for c in conversations))
            assert await r.wait_for(lambda: r.sender.holding == len(held), 5)
            api.kill()
            release.set()
            await contacts
            for conversation in conversations:
                assert await r.wait_for_reply(conversation, REPLY_BOUND_S)
            verdict = await r.check()
        finally:
            await api.stop()
            await serve.stop()
    failed = [a for a in r.sender.attempts if a.outcome != "200"]
    print(f"deliveries {r.sender.outcomes}; failed: {Counter(a.outcome for a in failed)}")
    # The fault really happened: requests the api was reading when it died failed (not with a
    # refused connection: they had reached it), and every delivery that failed went to it.
    cut = [a for a in failed if a.outcome != "ConnectError"]
    assert len(cut) >= len(held), failed
    assert {a.replica for a in failed} == {1}, failed
    assert len(r.sender.accepted) == 5 * len(conversations)
    assert sorted(b.conversation_id for b in verdict.bursts) == list(conversations)
    assert all(len(b.message_ids) == 5 for b in verdict.bursts)


@pytest.mark.serial
async def test_postgres_restarted_under_load_recovers_and_answers_every_burst_once(
    tmp_path: Path,
) -> None:
    with private_postgres() as cluster:
        database.migrate(cluster.url)
        port = free_port()
        async with (
            rig(cluster.url, tmp_path, ports=[port]) as r,
            serving(r, port, WORKER_LEASE_MS="2000") as _service,
        ):
            chatwoot, model = r.sims.chatwoot, r.sims.model
            chatwoot.requests = timed = TimedRequests()
            # Every model call takes a while, so buffers are mid-answer when the database goes.
            model.delay_next(0.5, times=1000)
            # One reply is still being posted when it goes: Chatwoot accepts it, but the
            # service cannot record that it did until the database is back.
            held_s = 1.5
            chatwoot.delay_next("/conversations/301/messages", held_s)
            conversations = range(301, 307)
            timeline: dict[str, float] = {}
            accepted_at: list[float] = []

            async def contact(conversation: int) -> None:
                await asyncio.sleep((conversation - 301) * 0.35)
                for burst in range(3):
                    for n in range(2):
                        await r.sender.say(conversation, f"burst {burst} line {n} ({conversation})")
                        accepted_at.append(time.monotonic())
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(WINDOW_MS / 1000 + 0.4)

            def reply_posting() -> bool:
                return any(
                    q.method == "POST" and q.path.endswith("/conversations/301/messages")
                    for q in chatwoot.requests
                )

            async def restart_database() -> None:
                assert await r.wait_for(reply_posting, REPLY_BOUND_S + 2)
                timeline["stop"] = time.monotonic()
                await asyncio.to_thread(cluster.stop, "fast")
                timeline["stopped"] = time.monotonic()
                await asyncio.sleep(2.0)
                await asyncio.to_thread(cluster.start)
                timeline["started"] = time.monotonic()

            await asyncio.gather(restart_database(), *(contact(c) for c in conversations))
            verdict = await r.check(settle_timeout_s=45)
            done_at = time.monotonic()
        first_after = min((t for t in accepted_at if t > timeline["started"]), default=float("nan"))
        print(
            f"outage {timeline['started'] - timeline['stop']:.2f} s; first webhook stored "
            f"{first_after - timeline['started']:.2f} s after the restart; settled "
            f"{done_at - timeline['started']:.2f} s after it; deliveries {r.sender.outcomes}"
        )
        # Webhooks that arrived during the outage were refused with 500 (which Chatwoot
        # retries) and delivered again.
        assert r.sender.outcomes["500"] > 0, r.sender.outcomes
        assert len(r.sender.accepted) == 6 * len(conversations)
        assert {b.conversation_id for b in verdict.bursts} == set(conversations)
        # The held reply really was answered by Chatwoot while the database was down.
        answered_at = post_times(timed, "/conversations/301/messages")[0] + held_s
        assert timeline["stopped"] < answered_at < timeline["started"], timeline


# -- Chatwoot failing --------------------------------------------------------------------------


async def test_chatwoot_failing_the_reply_with_500_then_ok_gives_one_reply(
    scratch_db: str, tmp_path: Path
) -> None:
    async with single_service(scratch_db, tmp_path) as (r, _service):
        r.sims.chatwoot.fail_next("/conversations/401/messages", status=500)
        await r.sender.say(401, "order 4010 please")
        assert await r.wait_for_reply(401, RETRIED_REPLY_BOUND_S)
        verdict = await r.check()
    posts = [
        q for q in r.sims.chatwoot.requests if q.method == "POST" and q.path.endswith("/messages")
    ]
    assert len(posts) == 2  # the refused one and the retry
    [reply] = verdict.replies.values()
    assert "#4010" in reply["content"]


async def test_chatwoot_429_is_retried_no_earlier_than_retry_after(
    scratch_db: str, tmp_path: Path
) -> None:
    # Longer than the first back-off (2 s), so only honouring the header explains the wait.
    retry_after_s = 3
    async with single_service(scratch_db, tmp_path) as (r, _service):
        timed = TimedRequests()
        r.sims.chatwoot.requests = timed
        r.sims.chatwoot.fail_next(
            "/conversations/501/messages", status=429, retry_after=retry_after_s
        )
        await r.sender.say(501, "order 5010, any news?")
        assert await r.wait_for_reply(501, RETRIED_REPLY_BOUND_S + retry_after_s)
        verdict = await r.check()
    first, second = post_times(timed, "/conversations/501/messages")
    print(f"retry {second - first:.2f} s after the 429 (Retry-After: {retry_after_s})")
    assert second - first >= retry_after_s
    assert len(verdict.replies) == 1


async def test_chatwoot_timing_out_on_the_reply_still_gives_exactly_one_reply(
    scratch_db: str, tmp_path: Path
) -> None:
    # The POST takes longer than the client waits, and Chatwoot creates the message anyway: the
    # retry must find it (its buffer_id marker) instead of posting the reply a second time.
    async with single_service(scratch_db, tmp_path, CHATWOOT_TIMEOUT_MS="1000") as (r, _service):
        r.sims.chatwoot.delay_next("/conversations/601/messages", 2.0)
        await r.sender.say(601, "order 6010 is missing")
        assert await r.wait_for_reply(601, RETRIED_REPLY_BOUND_S)
        verdict = await r.check()
    [reply] = verdict.replies.values()
    assert "#6010" in reply["content"]
    [burst] = verdict.bursts
    assert burst.attempts == 2  # the timed-out attempt was really retried


# -- the model failing -------------------------------------------------------------------------


async def test_the_model_timing_out_then_answering_gives_one_reply(
    scratch_db: str, tmp_path: Path
) -> None:
    timeout_ms = 1500
    async with single_service(scratch_db, tmp_path, AI_PROCESSING_TIMEOUT_MS=str(timeout_ms)) as (
        r,
        _service,
    ):
        r.sims.model.delay_next(timeout_ms / 1000 + 1.5)
        await r.sender.say(701, "order 7010?")
        sent_at = time.monotonic()
        assert await r.wait_for_reply(701, RETRIED_REPLY_BOUND_S)
        replied_s = time.monotonic() - sent_at
        verdict = await r.check()
    print(f"replied {replied_s:.2f} s after the message, past one model timeout")
    assert len(r.sims.model.requests) == 2
    [reply] = verdict.replies.values()
    assert "#7010" in reply["content"]


async def test_invalid_json_from_the_model_is_repaired_once_then_retried_then_handed_off(
    scratch_db: str, tmp_path: Path
) -> None:
    seen: Counter[str] = Counter()

    def script(messages: list[dict[str, Any]]) -> dict[str, Any] | str:
        # The burst is the first user message; a repair request comes after it.
        prompt = str(messages[1]["content"])
        for tag in ("always-garbage", "garbage-once"):
            if tag in prompt:
                seen[tag] += 1
                if tag == "always-garbage" or seen[tag] == 1:
                    return '{"shouldRespond": true, "content": "unterminated'
        return support_agent(messages)

    async with single_service(
        scratch_db, tmp_path, model_script=script, MAX_PROCESSING_ATTEMPTS="2"
    ) as (r, _service):
        await r.sender.say(801, "always-garbage: order 8010")
        await r.sender.say(801, "hello?")
        await r.sender.say(802, "garbage-once: order 8020")
        chatwoot = r.sims.chatwoot
        assert await r.wait_for(
            lambda: bool(chatwoot.private_notes(ACCOUNT, 801) and r.replies(802)),
            RETRIED_REPLY_BOUND_S,
        )
        verdict = await r.check()
    # 801: each of the two attempts asked once and once more to repair; 802: the repair answered.
    assert seen == {"always-garbage": 4, "garbage-once": 2}
    # 801: both attempts failed, so a human got it; nothing was said to the contact.
    [failed] = [b for b in verdict.bursts if b.conversation_id == 801]
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.buffer_id in verdict.handoffs
    assert r.replies(801) == []
    assert chatwoot.status(ACCOUNT, 801) == "open"
    # 802: the first attempt answered, after one repair.
    [answered] = [b for b in verdict.bursts if b.conversation_id == 802]
    assert answered.attempts == 1
    assert "#8020" in verdict.replies[answered.buffer_id]["content"]
    assert chatwoot.private_notes(ACCOUNT, 802) == []


# -- deliveries and the contact ----------------------------------------------------------------


async def test_duplicate_and_out_of_order_deliveries_store_each_message_once(
    scratch_db: str, tmp_path: Path
) -> None:
    async with single_service(scratch_db, tmp_path) as (r, service):
        say = r.sender.say
        first, second, third = 9101, 9102, 9103
        texts = {first: "hi, order 9100", second: "it never came", third: "please check"}
        await say(91, texts[second], message_id=second)  # the later message arrives first
        # Chatwoot's retries can overlap the original delivery.
        await asyncio.gather(
            *(say(91, texts[first], message_id=first) for _ in range(3)),
            say(91, texts[second], message_id=second),
        )
        await say(91, texts[third], message_id=third)
        await say(91, texts[first], message_id=first)
        assert await r.wait_for_reply(91, REPLY_BOUND_S)
        verdict = await r.check()
        prompts = r.world(service).prompts()
    assert r.sender.outcomes == {"200": 7}
    [burst] = verdict.bursts
    assert burst.message_ids == (first, second, third)
    [prompt] = prompts
    assert World.burst_lines(prompt) == [texts[first], texts[second], texts[third]]


async def test_a_message_during_generation_drops_the_stale_reply_and_answers_the_whole_burst(
    scratch_db: str, tmp_path: Path
) -> None:
    async with single_service(scratch_db, tmp_path) as (r, service):
        r.sims.model.delay_next(2.0)  # the first answer is still being written...
        await r.sender.say(100, "my order 1000")
        assert await r.wait_for(lambda: bool(r.sims.model.requests), REPLY_BOUND_S)
        # ...when the contact writes twice more.
        await r.sender.say(100, "and the invoice please")
        await asyncio.sleep(0.3)
        await r.sender.say(100, "also my address changed")
        assert await r.wait_for_reply(100, REPLY_BOUND_S + 2)
        verdict = await r.check()
        prompts = r.world(service).prompts()
    assert len(prompts) == 2
    assert World.burst_lines(prompts[-1]) == [
        "my order 1000",
        "and the invoice please",
        "also my address changed",
    ]
    assert len(verdict.bursts) == 1
    [reply] = verdict.replies.values()
    assert "3 messages" in reply["content"]  # the stale answer thanked for one
    # The first buffer gave its message to the newer one instead of being answered.
    assert [b.status for b in verdict.snapshot.buffers if not b.message_ids] == ["superseded"]
    assert r.sims.chatwoot.typing_events(ACCOUNT, 100)[-1] == "off"
