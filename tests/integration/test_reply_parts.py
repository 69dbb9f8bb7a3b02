"""The send ledger per part, and the burst's assessment, on the in-memory fake and on both
databases: one reservation records every part of a message, each part is confirmed on its own,
and a worker that dies between parts leaves only the rest to post."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.marker import Marker, read
from chatbuffer.domain.model import Assessment, ConversationKey, InboundMessage, ModelDecision
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.flags import CachedControls
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import bot_replies, message_buffer
from chatbuffer.storage.transcripts import SqlBurstArchive
from chatbuffer.testing import (
    FakeClock,
    MemoryControls,
    MemoryStore,
    RecordingChatwoot,
    RecordingObserver,
    ScriptedReplyModel,
)
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig

KEY = ConversationKey(2, 31)
POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
LEASE = timedelta(seconds=10)
PARTS = [PostedMessage("reply", text, part=i) for i, text in enumerate(["one.", "two.", "three."])]
ASSESSED = Assessment(
    urgency=7,
    intent="refund",
    actions=("open_ticket", "refund"),
    confidence=0.8,
    should_respond=True,
)


def message(mid: int, text: str, key: ConversationKey = KEY) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=mid,
        content=text,
        kind="text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def claimed(store, clock: FakeClock, text: str = "hi"):
    await store.record_incoming(message(1, text), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    return job


async def test_one_reservation_records_every_part_and_each_is_confirmed_alone(
    any_store,
) -> None:
    store = any_store
    clock = FakeClock()
    job = await claimed(store, clock)
    assert await store.reserve_send(job, "w1", PARTS, clock.now()) == "send"
    assert (await store.load(job, "w1", 0)).posted == PARTS
    # A later reservation (before the next part) keeps what was recorded.
    changed = [PostedMessage("reply", "other", part=i) for i in range(3)]
    assert await store.reserve_send(job, "w1", changed, clock.now()) == "send"
    assert await store.confirm_sent(KEY, Marker(job.buffer_id, "reply", 1), 501)
    assert not await store.confirm_sent(KEY, Marker(job.buffer_id, "reply", 1), 502)
    assert not await store.confirm_sent(KEY, Marker(job.buffer_id, "reply", 3), 503)
    assert await store.confirm_sent(KEY, Marker(job.buffer_id, "reply", 0), 500)
    posted = (await store.load(job, "w1", 0)).posted
    assert [(p.part, p.content, p.chatwoot_message_id) for p in posted] == [
        (0, "one.", 500),
        (1, "two.", 501),
        (2, "three.", None),
    ]
    assert await store.confirm_sent(KEY, Marker(job.buffer_id, "reply", 2), 504)
    assert await store.complete(job, "w1", clock.now(), "replied", assessment=ASSESSED)
    if isinstance(store, MemoryStore):
        assert store.assessments[job.buffer_id] == ASSESSED
        return
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(bot_replies.c.part, bot_replies.c.chatwoot_message_id).order_by(
                    bot_replies.c.part
                )
            )
        ).all()
        [row] = (await conn.execute(select(message_buffer))).all()
    assert [tuple(r) for r in rows] == [(0, 500), (1, 501), (2, 504)]
    assert (
        row.urgency,
        row.model_intent,
        row.model_actions,
        row.model_confidence,
        row.model_should_respond,
    ) == (7, "refund", ["open_ticket", "refund"], 0.8, True)
    # Operators read the whole reply and the assessment back (`chatbuffer prompt try`).
    burst = await SqlBurstArchive(store.engine).burst(job.buffer_id, 0)
    assert burst is not None
    assert burst.answer == PostedMessage("reply", "one.\n\ntwo.\n\nthree.", 500)
    assert burst.assessment == ASSESSED


async def test_a_buffer_the_model_never_answered_has_no_assessment(store: SqlBufferStore) -> None:
    clock = FakeClock()
    job = await claimed(store, clock)
    assert await store.complete(job, "w1", clock.now(), "empty")
    burst = await SqlBurstArchive(store.engine).burst(job.buffer_id, 0)
    assert burst is not None and burst.assessment is None


async def test_a_worker_that_dies_between_parts_leaves_only_the_rest(
    store: SqlBufferStore,
) -> None:
    clock = FakeClock()
    chatwoot = RecordingChatwoot()
    long_reply = "\n\n".join(f"Paragraph {n}." + " word" * 30 for n in range(5))
    model = ScriptedReplyModel(
        lambda _: ModelDecision(
            should_respond=True, content=long_reply, confidence=0.9, intent="order_status"
        )
    )

    def pipeline() -> Pipeline:
        return Pipeline(
            history=store,
            ledger=store,
            flags=CachedControls(MemoryControls(), clock),
            chatwoot=chatwoot,
            model=model,
            clock=clock,
            observer=RecordingObserver(),
            config=PipelineConfig(
                quality_threshold=0.7,
                typing_enabled=False,
                history_limit=10,
                retry=RetryPolicy(max_attempts=3),
                policy=POLICY,
                reply_max_chars=400,
                # No pause: the fake clock stands still while the database answers.
                pause_per_char=timedelta(0),
            ),
        )

    async def die_before_the_third_part() -> None:
        if len(chatwoot.sent) == 2:
            raise asyncio.CancelledError  # the process is gone: nothing more happens

    job = await claimed(store, clock, "where is my order?")
    chatwoot.while_posting = die_before_the_third_part
    with pytest.raises(asyncio.CancelledError):
        await pipeline().process(job, "w1")
    chatwoot.while_posting = None
    clock.advance(LEASE + timedelta(seconds=15))
    [again] = await store.claim_due(clock.now(), "w2", LEASE, 10)
    assert again.buffer_id == job.buffer_id
    await pipeline().process(again, "w2")
    parts = [read(s.content_attributes, private=s.private) for s in chatwoot.sent]
    assert [p.part for p in parts if p is not None] == [0, 1, 2]
    assert "\n\n".join(s.content for s in chatwoot.sent) == long_reply.strip()
    assert all(len(s.content) <= 400 for s in chatwoot.sent)
    # The second attempt looked only for the part nobody had confirmed.
    assert [m.part for _, m, _ in chatwoot.lookups] == [2]
    assert len(model.prompts) == 1
    async with store.engine.connect() as conn:
        ids = (await conn.execute(select(bot_replies.c.chatwoot_message_id))).scalars().all()
        [status] = (await conn.execute(select(message_buffer.c.status))).scalars().all()
    assert sorted(ids) == sorted(s.message_id for s in chatwoot.sent)
    assert status == "completed"
