"""The stored-burst read port (``chatbuffer prompt show``/``try``): ``SqlBurstArchive`` on SQLite
and PostgreSQL and ``MemoryBurstArchive`` over ``MemoryStore``, held to the same cases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import Attachment, ConversationKey, InboundMessage
from chatbuffer.domain.ports import BurstArchive, PostedMessage
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.transcripts import SqlBurstArchive
from chatbuffer.testing import FakeClock, MemoryBurstArchive, MemoryStore

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=5
)
KEY = ConversationKey(1, 42)
OTHER = ConversationKey(1, 43)
LEASE = timedelta(seconds=10)
PLACE = Attachment(
    "location", fallback_title="Acme, 1 Main St", coordinates_lat=1.5, coordinates_long=-2.25
)
PHOTO = Attachment("image", "https://cw.example/p.jpg", content_type="image/jpeg", file_size=9)


def message(mid: int, text: str, key: ConversationKey = KEY, *attachments) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=mid,
        content=text,
        kind="image" if attachments else "text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        attachments=attachments,
        sender={"id": 7, "name": "Ana"},
        conversation={"id": key.conversation_id, "status": "pending", "inbox_id": 4},
    )


@pytest.fixture
def store(any_store: MemoryStore | SqlBufferStore) -> MemoryStore | SqlBufferStore:
    return any_store


def archive_of(store: MemoryStore | SqlBufferStore) -> BurstArchive:
    if isinstance(store, MemoryStore):
        return MemoryBurstArchive(store)
    return SqlBurstArchive(store.engine)


async def answered(store, clock: FakeClock, posted: PostedMessage | None) -> uuid.UUID:
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    clock.advance(1)
    assert await store.complete(job, "w1", clock.now(), "done", posted)
    return job.buffer_id


async def test_bursts_read_back_with_their_history_and_answer(store) -> None:
    clock = FakeClock()
    archive = archive_of(store)
    await store.record_incoming(message(1, "where is my order?", KEY, PLACE), POLICY, clock.now())
    first = await answered(store, clock, PostedMessage("reply", "It ships tomorrow.", 501))
    clock.advance(3600)
    await store.record_incoming(message(2, "still nothing"), POLICY, clock.now())
    clock.advance(2)
    await store.record_incoming(message(3, "look", KEY, PHOTO), POLICY, clock.now())
    note = PostedMessage("handoff_note", "chatbuffer handed this conversation to a human", 502)
    second = await answered(store, clock, note)
    clock.advance(60)
    await store.record_incoming(message(4, "hello?", OTHER), POLICY, clock.now())

    recent = await archive.recent(10, history_limit=10)
    assert [(b.key, [m.content for m in b.messages]) for b in recent] == [
        (OTHER, ["hello?"]),
        (KEY, ["still nothing", "look"]),
        (KEY, ["where is my order?"]),
    ]
    assert [b.answer for b in recent] == [
        None,
        note,
        PostedMessage("reply", "It ships tomorrow.", 501),
    ]
    assert [b.status for b in recent] == ["active", "completed", "completed"]

    burst = await archive.burst(second, history_limit=10)
    assert burst is not None and burst.buffer_id == second
    assert [m.attachments for m in burst.messages] == [(), (PHOTO,)]
    assert burst.messages[1].conversation["inbox_id"] == 4
    assert [(h.role, h.content, h.attachments) for h in burst.history] == [
        ("contact", "where is my order?", (PLACE,)),
        ("assistant", "It ships tomorrow.", ()),
    ]
    assert burst.last_message_at == burst.messages[-1].received_at
    short = await archive.burst(second, 1)
    assert short is not None
    assert [(h.role, h.content) for h in short.history] == [("assistant", "It ships tomorrow.")]
    oldest = await archive.burst(first, 10)
    assert oldest is not None and oldest.history == []
    assert len(await archive.recent(1, 10)) == 1


async def test_an_unknown_buffer_is_none(store) -> None:
    assert await archive_of(store).burst(uuid.uuid4(), 10) is None
    assert await archive_of(store).recent(5, 10) == []
