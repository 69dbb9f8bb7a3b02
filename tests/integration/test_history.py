"""The whole conversation on both databases (and the in-memory store, which keeps the same
contract): human agents' messages, the history fetched from a Chatwoot simulator over HTTP, the
rolling summary and how often it is refreshed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chatbuffer.chatwoot.history import ChatwootHistory
from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import (
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
    ModelDecision,
)
from chatbuffer.domain.ports import BufferContents, ClaimedJob, HistorySource, PostedMessage
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError
from chatbuffer.flags import CachedControls
from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.server import serve_in_background
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import conversation_memory, history_messages
from chatbuffer.storage.transcripts import SqlBurstArchive
from chatbuffer.testing import (
    FakeClock,
    MemoryBurstArchive,
    MemoryControls,
    MemoryStore,
    RecordingChatwoot,
    RecordingObserver,
    ScriptedReplyModel,
    ScriptedSummarizer,
)
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from tests.support.swagger import load_validator

KEY = ConversationKey(1, 42)
OTHER = ConversationKey(1, 43)
POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
LEASE = timedelta(seconds=10)
USER_TOKEN = "history-user-token-7c1d"
REPLY = "It ships tomorrow."

Store = MemoryStore | SqlBufferStore


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def said(mid: int, text: str, key: ConversationKey = KEY) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=mid,
        content=text,
        kind="text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        sender={"id": 7, "name": "Ana"},
    )


def agent(mid: int, text: str, at: datetime, author: str | None = "Bruno") -> HistoryEntry:
    return HistoryEntry("agent", text, at, author=author, chatwoot_message_id=mid)


async def answer(store: Store, clock: FakeClock, reply_id: int) -> None:
    """The contact falls quiet; the buffer is answered with ``REPLY``, confirmed as
    ``reply_id``."""
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    assert await store.reserve_send(job, "w1", PostedMessage("reply", REPLY), clock.now()) == "send"
    clock.advance(1)
    posted = PostedMessage("reply", REPLY, reply_id)
    assert await store.complete(job, "w1", clock.now(), "replied", posted)


async def load_next(
    store: Store, clock: FakeClock, *, limit: int = 10, backfill: bool = False
) -> tuple[ClaimedJob, BufferContents]:
    """The contact falls quiet; the next buffer is claimed and loaded."""
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    return job, await store.load(job, "w1", limit, backfill=backfill)


async def test_an_agent_s_message_is_history_in_order_under_their_name(store: Store) -> None:
    clock = FakeClock()
    await store.record_incoming(said(100, "my jacket arrived torn"), POLICY, clock.now())
    await answer(store, clock, 101)
    clock.advance(60)
    message = agent(102, "Refunded order 4411.", clock.now())
    pause = clock.now() + timedelta(hours=1)
    assert await store.record_agent_message(KEY, message, clock.now(), "agent", pause) == 0
    # A redelivered webhook keeps the first copy.
    again = agent(102, "edited?", clock.now() + timedelta(seconds=5))
    assert await store.record_agent_message(KEY, again, clock.now(), "agent") == 0
    # The pause holds: the contact's next message is not buffered until the bot is resumed.
    clock.advance(60)
    assert (await store.record_incoming(said(103, "thanks!"), POLICY, clock.now())).stored is False
    assert await store.resume_bot(KEY, clock.now())
    await store.record_incoming(said(104, "when do I get it?"), POLICY, clock.now())
    _, contents = await load_next(store, clock)
    assert [(h.role, h.author, h.content) for h in contents.history] == [
        ("contact", None, "my jacket arrived torn"),
        ("assistant", None, REPLY),
        ("agent", "Bruno", "Refunded order 4411."),
    ]
    assert contents.history[2].chatwoot_message_id == 102
    assert contents.summary is None and contents.backfill_before is None


async def test_an_agent_s_message_cancels_the_unanswered_burst(store: Store) -> None:
    clock = FakeClock()
    await store.record_incoming(said(100, "hello?"), POLICY, clock.now())
    clock.advance(5)
    assert (
        await store.record_agent_message(KEY, agent(101, "Hi!", clock.now()), clock.now(), "a") == 1
    )
    assert await store.claim_due(clock.now() + timedelta(minutes=5), "w1", LEASE, 10) == []


async def test_history_after_the_summary_only_and_the_furthest_summary_wins(store: Store) -> None:
    clock = FakeClock()
    for n in range(3):
        await store.record_incoming(said(100 + 2 * n, f"message {n}"), POLICY, clock.now())
        await answer(store, clock, 101 + 2 * n)
        clock.advance(60)
    await store.record_incoming(said(200, "and now?"), POLICY, clock.now())
    job, before = await load_next(store, clock)
    assert len(before.history) == 6
    # It covers message 0, its reply and message 1.
    through = before.history[2].at
    summary = ConversationSummary("Ana's jacket is late.", through, 3)
    assert await store.save_summary(KEY, summary, clock.now())
    assert not await store.save_summary(
        KEY, ConversationSummary("stale", through - timedelta(seconds=1), 2), clock.now()
    )
    assert await store.save_summary(OTHER, ConversationSummary("other", through, 1), clock.now())
    contents = await store.load(job, "w1", 10)
    assert contents.summary == summary
    assert [h.content for h in contents.history] == [REPLY, "message 2", REPLY]
    # A refresh that reaches further replaces it.
    further = ConversationSummary("All of it.", before.history[4].at, 5)
    assert await store.save_summary(KEY, further, clock.now())
    assert (await store.load(job, "w1", 10)).summary == further


async def test_where_to_fetch_from_chatwoot_until_it_was_fetched(store: Store) -> None:
    clock = FakeClock()
    await store.record_incoming(said(300, "hi"), POLICY, clock.now())
    await answer(store, clock, 301)
    # An agent's message older than every stored one (ids grow in Chatwoot, not by arrival).
    clock.advance(10)
    await store.record_agent_message(KEY, agent(250, "Welcome!", clock.now()), clock.now(), "a")
    clock.advance(10)
    await store.record_incoming(said(302, "and the price?"), POLICY, clock.now())
    job, contents = await load_next(store, clock, backfill=True)
    assert contents.backfill_before == 250
    assert (await store.load(job, "w1", 10)).backfill_before is None  # not asked
    start = datetime(2025, 12, 1, tzinfo=UTC)
    fetched = [
        HistoryEntry("contact", "do you ship to Porto?", start, chatwoot_message_id=200),
        agent(210, "Yes.", start + timedelta(minutes=1), author="Carla"),
        agent(250, "Welcome! (again)", start + timedelta(minutes=2)),
    ]
    await store.record_backfill(KEY, fetched, clock.now())
    await store.record_backfill(KEY, [], clock.now())
    contents = await store.load(job, "w1", 10, backfill=True)
    assert contents.backfill_before is None
    assert [(h.role, h.author, h.content) for h in contents.history] == [
        ("contact", None, "do you ship to Porto?"),
        ("agent", "Carla", "Yes."),
        ("contact", None, "hi"),
        ("assistant", None, REPLY),
        ("agent", "Bruno", "Welcome!"),
    ]
    # Another conversation was never fetched.
    await store.record_incoming(said(400, "hello", OTHER), POLICY, clock.now())
    clock.advance(30)
    jobs = await store.claim_due(clock.now(), "w2", LEASE, 10)
    [other] = [j for j in jobs if j.key == OTHER]
    assert (await store.load(other, "w2", 10, backfill=True)).backfill_before == 400


async def test_the_archive_reads_the_same_history_and_summary(store: Store) -> None:
    clock = FakeClock()
    archive = (
        MemoryBurstArchive(store)
        if isinstance(store, MemoryStore)
        else SqlBurstArchive(store.engine)
    )
    await store.record_incoming(said(100, "hi"), POLICY, clock.now())
    await answer(store, clock, 101)
    clock.advance(10)
    await store.record_agent_message(KEY, agent(102, "Hello Ana", clock.now()), clock.now(), "a")
    clock.advance(10)
    summary = ConversationSummary("Ana said hi.", clock.now() - timedelta(seconds=40), 1)
    await store.save_summary(KEY, summary, clock.now())
    await store.resume_bot(KEY, clock.now())
    await store.record_incoming(said(103, "hi again"), POLICY, clock.now())
    [burst, _] = await archive.recent(2, 10)
    assert burst.summary == summary
    assert [(h.role, h.content) for h in burst.history] == [
        ("assistant", REPLY),
        ("agent", "Hello Ana"),
    ]


# -- Chatwoot's history, over HTTP -------------------------------------------------------------


@pytest.fixture
async def chatwoot() -> AsyncIterator[tuple[ChatwootSimulator, ChatwootHistory]]:
    simulator = ChatwootSimulator(api_token=USER_TOKEN, validator=load_validator(), user_token=True)
    url, stop = await serve_in_background(simulator.app)
    history = ChatwootHistory(base_url=url, user_token=USER_TOKEN, timeout_s=2)
    try:
        yield simulator, history
    finally:
        await history.aclose()
        await stop()
    assert simulator.violations == []


def seed(simulator: ChatwootSimulator, start: datetime, count: int) -> None:
    """``count`` messages before chatbuffer, ids 10, 11, …: the contact and agent Carla in
    turn, every fifth a private note and every seventh an activity line."""
    for i in range(count):
        kind = "contact" if i % 2 == 0 else "user"
        simulator.add_message(
            KEY.account_id,
            KEY.conversation_id,
            message_id=10 + i,
            content=f"old {i}",
            created_at=start + timedelta(minutes=i),
            sender="activity" if i % 7 == 6 else kind,  # type: ignore[arg-type]
            sender_name="Carla" if kind == "user" else "Ana",
            private=i % 5 == 4,
        )


async def test_chatwoot_s_earlier_messages_are_read_page_by_page(
    chatwoot: tuple[ChatwootSimulator, ChatwootHistory],
) -> None:
    simulator, history = chatwoot
    start = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)
    seed(simulator, start, 45)
    found = await history.earlier(KEY, 50, 30)
    public = [i for i in range(40) if i % 5 != 4 and i % 7 != 6]
    assert [t.chatwoot_message_id for t in found] == [10 + i for i in public][-30:]
    for turn in found:
        i = (turn.chatwoot_message_id or 0) - 10
        assert (turn.role, turn.content, turn.at) == (
            "contact" if i % 2 == 0 else "agent",
            f"old {i}",
            start + timedelta(minutes=i),
        )
    assert {t.author for t in found if t.role == "agent"} == {"Carla"}
    befores = [r.query.get("before") for r in simulator.requests]
    assert befores == ["50", "30", "10"]
    assert await history.earlier(KEY, 10, 30) == []


async def test_a_bot_token_may_not_read_the_history() -> None:
    simulator = ChatwootSimulator(api_token=USER_TOKEN, validator=load_validator())
    url, stop = await serve_in_background(simulator.app)
    history = ChatwootHistory(base_url=url, user_token=USER_TOKEN, timeout_s=2)
    try:
        with pytest.raises(ChatwootError) as refused:
            await history.earlier(KEY, 50, 10)
        assert refused.value.status == 401
        assert USER_TOKEN not in str(refused.value)
    finally:
        await history.aclose()
        await stop()


# -- the pipeline, on the databases -------------------------------------------------------------


class Harness:
    def __init__(
        self,
        store: SqlBufferStore,
        *,
        earlier: HistorySource | None = None,
        history_limit: int = 10,
        summary_every: int = 10,
    ) -> None:
        self.store = store
        self.clock = FakeClock()
        self.chatwoot = RecordingChatwoot()
        self.model = ScriptedReplyModel(
            lambda _prompt: ModelDecision(True, REPLY, 0.9, "order_status")
        )
        self.summarizer = ScriptedSummarizer()
        self.next_id = 1000
        self.pipeline = Pipeline(
            history=store,
            ledger=store,
            flags=CachedControls(MemoryControls(), self.clock),
            chatwoot=self.chatwoot,
            model=self.model,
            clock=self.clock,
            observer=RecordingObserver(),
            memory=store,
            earlier=earlier,
            summarizer=self.summarizer,
            config=PipelineConfig(
                quality_threshold=0.7,
                typing_enabled=False,
                history_limit=history_limit,
                retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
                policy=POLICY,
                summary_every=summary_every,
            ),
        )

    async def burst(self, text: str) -> Prompt:
        self.next_id += 1
        await self.store.record_incoming(said(self.next_id, text), POLICY, self.clock.now())
        self.clock.advance(30)
        [job] = await self.store.claim_due(self.clock.now(), "w1", LEASE, 10)
        await self.pipeline.process(job, "w1")
        self.clock.advance(60)
        return self.model.prompts[-1]

    async def memory(self) -> tuple[str | None, int, datetime | None]:
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(conversation_memory))).one()
        return row.summary, row.summary_turns, row.backfilled_at


def conversation_lines(prompt: Prompt) -> list[str]:
    inside = prompt.user.split("<conversation_history>\n", 1)[1]
    return inside.split("\n</conversation_history>", 1)[0].splitlines()


async def test_history_from_before_chatbuffer_is_fetched_once_and_stored(
    sql_store: SqlBufferStore, chatwoot: tuple[ChatwootSimulator, ChatwootHistory]
) -> None:
    simulator, history = chatwoot
    store = sql_store
    h = Harness(store, earlier=history, history_limit=4, summary_every=2)
    seed(simulator, datetime(2025, 11, 3, 9, 0, tzinfo=UTC), 12)
    first = await h.burst("hello again")
    # The newest public ones before the burst's message, as many as the window and margin.
    assert conversation_lines(first) == [
        "Human agent Carla: old 7",
        "Customer: old 8",
        "Customer: old 10",
        "Human agent Carla: old 11",
    ]
    await h.burst("is my order ready?")
    gets = [r for r in simulator.requests if r.method == "GET"]
    assert [r.query for r in gets] == [{"before": "1001"}]
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(history_messages).order_by("chatwoot_message_id"))).all()
    # Notes (14, 19) and the activity line (16) are not the conversation.
    assert [(r.chatwoot_message_id, r.role, r.author, r.source) for r in rows] == [
        (11, "agent", "Carla", "chatwoot"),
        (12, "contact", None, "chatwoot"),
        (13, "agent", "Carla", "chatwoot"),
        (15, "agent", "Carla", "chatwoot"),
        (17, "agent", "Carla", "chatwoot"),
        (18, "contact", None, "chatwoot"),
        (20, "contact", None, "chatwoot"),
        (21, "agent", "Carla", "chatwoot"),
    ]
    assert (await h.memory())[2] is not None


@pytest.fixture
async def sql_store(db_url: str) -> AsyncIterator[SqlBufferStore]:
    engine = database.create_engine(db_url, pool_size=5)
    try:
        yield SqlBufferStore(engine, database_clock=False)
    finally:
        await engine.dispose()


async def test_the_summary_is_stored_and_refreshed_only_when_enough_turns_fell_out(
    sql_store: SqlBufferStore,
) -> None:
    h = Harness(sql_store, history_limit=2, summary_every=3)
    calls = []
    for n in range(1, 8):
        await h.burst(f"message {n}")
        calls.append(len(h.summarizer.prompts))
    assert calls == [0, 0, 0, 1, 1, 2, 2]
    text, turns, backfilled = await h.memory()
    assert turns == 8
    assert backfilled is None
    assert (
        text
        == f"Customer: message 3 / Assistant: {REPLY} / Customer: message 4 / Assistant: {REPLY}"
    )
    assert conversation_lines(h.model.prompts[-1]) == [
        f"Summary of the 8 turns before these: {text}",
        "Customer: message 6",
        f"You: {REPLY}",
    ]
