"""The store's contract, run against ``MemoryStore`` and the SQL store on SQLite and PostgreSQL.

The in-memory fake the unit tests use passes exactly these cases, so it cannot drift from the
database.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import Attachment, ConversationKey, InboundMessage
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import message_buffer
from chatbuffer.testing import FakeClock, MemoryStore
from tests.support.probes import snapshot

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=3
)
KEY = ConversationKey(1, 42)
OTHER = ConversationKey(1, 43)
LEASE = timedelta(seconds=10)


def message(mid: int, key: ConversationKey = KEY, text: str = "hi", **extra) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=mid,
        content=text,
        kind="text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        sender={"id": 7, "name": "Ana"},
        conversation={"id": key.conversation_id, "status": "pending"},
        **extra,
    )


Store = MemoryStore | SqlBufferStore


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


async def test_burst_goes_into_one_buffer_whose_job_moves_with_each_message(store) -> None:
    clock = FakeClock()
    start = clock.now()
    first = await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(10)
    second = await store.record_incoming(message(2), POLICY, clock.now())
    assert first.stored and first.opened_buffer
    assert second.stored and not second.opened_buffer
    assert second.buffer_id == first.buffer_id
    assert second.message_count == 2
    assert second.due_at == start + timedelta(seconds=40)
    seen = await snapshot(store)
    [job] = seen.jobs
    assert job.scheduled_for == start + timedelta(seconds=40)
    assert job.status == "scheduled"
    [buf] = seen.buffers
    assert (buf.status, buf.message_count) == ("active", 2)
    assert buf.due == start + timedelta(seconds=40)
    [conv] = seen.conversations
    assert (conv.state, conv.message_count) == ("buffering", 2)
    assert conv.active_buffer_id == first.buffer_id


async def test_redelivered_message_changes_nothing(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    before = await snapshot(store)
    clock.advance(5)
    again = await store.record_incoming(message(1, text="changed"), POLICY, clock.now())
    assert not again.stored
    assert await snapshot(store) == before
    [stored] = before.messages
    assert stored.content == "hi"


async def test_conversations_are_kept_apart(store) -> None:
    clock = FakeClock()
    a = await store.record_incoming(message(1, KEY), POLICY, clock.now())
    b = await store.record_incoming(message(2, OTHER), POLICY, clock.now())
    assert a.buffer_id != b.buffer_id
    assert a.opened_buffer and b.opened_buffer


async def test_the_database_refuses_a_second_active_buffer(db_url: str) -> None:
    clock = FakeClock()
    engine = database.create_engine(db_url, pool_size=1)
    store = SqlBufferStore(engine)
    try:
        result = await store.record_incoming(message(1), POLICY, clock.now())
        async with store.engine.connect() as conn:
            [buf] = (await conn.execute(select(message_buffer))).all()
            values = dict(buf._mapping)
            values["id"] = uuid.uuid4()
            with pytest.raises(IntegrityError):
                await conn.execute(insert(message_buffer).values(**values))
        assert result.buffer_id == buf.id
    finally:
        await engine.dispose()


async def test_full_buffer_closes_at_once_and_next_message_opens_a_new_one(store) -> None:
    clock = FakeClock()
    results = []
    for mid in (1, 2, 3, 4):
        results.append(await store.record_incoming(message(mid), POLICY, clock.now()))
        clock.advance(1)
    assert results[2].closed
    assert results[2].due_at == clock.now() - timedelta(seconds=2)
    assert results[3].opened_buffer
    assert results[3].buffer_id != results[0].buffer_id
    statuses = sorted(r.status for r in (await snapshot(store)).buffers)
    assert statuses == ["active", "closed"]


async def test_claim_takes_only_due_buffers_and_holds_them_under_a_lease(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    assert await store.claim_due(clock.now(), "w1", LEASE, 10) == []
    assert await store.next_wake_at(clock.now()) == clock.now() + timedelta(seconds=30)
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    assert job.key == KEY and job.attempts == 1
    assert await store.claim_due(clock.now(), "w2", LEASE, 10) == []
    seen = await snapshot(store)
    [buf] = seen.buffers
    assert buf.status == "processing"
    [conv] = seen.conversations
    assert conv.state == "processing"
    assert await store.next_wake_at(clock.now()) == clock.now() + LEASE
    contents = await store.load(job, "w1", history_limit=10)
    assert [m.chatwoot_message_id for m in contents.messages] == [1]
    assert contents.check == "send"
    # The check comes with the contents: someone else's load learns it may not answer.
    assert (await store.load(job, "w2", history_limit=10)).check == "cancelled"


async def test_a_message_during_processing_opens_a_new_buffer(store) -> None:
    clock = FakeClock()
    first = await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    late = await store.record_incoming(message(2), POLICY, clock.now())
    assert late.opened_buffer and late.buffer_id != first.buffer_id
    contents = await store.load(job, "w1", history_limit=10)
    assert [m.chatwoot_message_id for m in contents.messages] == [1]
    assert contents.check == "newer"


async def test_an_expired_lease_is_taken_over_by_another_worker(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "dead", LEASE, 10)
    clock.advance(LEASE + timedelta(milliseconds=1))
    [again] = await store.claim_due(clock.now(), "alive", LEASE, 10)
    assert again.buffer_id == job.buffer_id and again.attempts == 2
    # The dead worker can no longer complete or extend what it lost.
    assert await store.heartbeat("dead", [job], LEASE, clock.now()) == set()
    assert not await store.complete(job, "dead", clock.now(), "replied")
    assert await store.complete(again, "alive", clock.now(), "replied")
    seen = await snapshot(store)
    [buf] = seen.buffers
    assert (buf.status, buf.outcome) == ("completed", "replied")
    [conv] = seen.conversations
    assert conv.state == "idle"


async def test_heartbeat_keeps_the_lease(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    clock.advance(8)
    assert await store.heartbeat("w1", [job], LEASE, clock.now()) == {job.job_id}
    clock.advance(8)
    assert await store.claim_due(clock.now(), "w2", LEASE, 10) == []


async def test_retry_reschedules_and_failure_is_recorded(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    retry_at = clock.now() + timedelta(seconds=2)
    assert await store.release_for_retry(job, "w1", "model timed out", retry_at)
    [row] = (await snapshot(store)).jobs
    assert (row.status, row.error_message, row.scheduled_for) == (
        "scheduled",
        "model timed out",
        retry_at,
    )
    # A new message must not join a buffer that is waiting for its retry.
    newer = await store.record_incoming(message(2), POLICY, clock.now())
    assert newer.opened_buffer
    clock.advance(2)
    [again] = await store.claim_due(clock.now(), "w1", LEASE, 1)
    assert again.buffer_id == job.buffer_id and again.attempts == 2
    assert await store.fail(again, "w1", "gave up", clock.now())
    buf = (await snapshot(store)).buffer(job.buffer_id)
    assert (buf.status, buf.outcome) == ("failed", "gave up")


async def test_human_takeover_cancels_open_and_processing_buffers(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    await store.record_incoming(message(2), POLICY, clock.now())
    assert await store.cancel_open(KEY, clock.now(), "a human agent answered") == 2
    assert await store.before_send(job, "w1") == "cancelled"
    seen = await snapshot(store)
    assert {b.status for b in seen.buffers} == {"cancelled"}
    assert {j.status for j in seen.jobs} == {"cancelled"}
    assert [(c.state, c.active_buffer_id) for c in seen.conversations] == [("idle", None)]
    clock.advance(60)
    assert await store.claim_due(clock.now(), "w2", LEASE, 10) == []
    assert await store.next_wake_at(clock.now()) is None
    # Nothing to cancel the second time.
    assert await store.cancel_open(KEY, clock.now(), "again") == 0


async def test_a_human_takeover_keeps_the_bot_out_until_the_pause_ends(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    until = clock.now() + timedelta(minutes=60)
    assert await store.cancel_open(KEY, clock.now(), "a human agent answered", until) == 1
    clock.advance(60)
    paused = await store.record_incoming(message(2), POLICY, clock.now())
    assert not paused.stored and paused.human_active_until == until
    assert len((await snapshot(store)).messages) == 1
    clock.advance(timedelta(minutes=60))
    later = await store.record_incoming(message(3), POLICY, clock.now())
    assert later.stored and later.opened_buffer


async def test_a_pause_is_set_even_with_nothing_to_cancel_and_can_be_lifted(store) -> None:
    clock = FakeClock()
    until = clock.now() + timedelta(minutes=60)
    assert await store.cancel_open(KEY, clock.now(), "a human agent answered", until) == 0
    assert not (await store.record_incoming(message(1), POLICY, clock.now())).stored
    assert await store.resume_bot(KEY, clock.now())
    assert not await store.resume_bot(KEY, clock.now())
    assert (await store.record_incoming(message(1), POLICY, clock.now())).stored


async def test_history_holds_earlier_bursts_and_replies_in_order(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1, text="where is my order?"), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    clock.advance(1)
    posted = PostedMessage("reply", "It ships tomorrow.", 501)
    assert await store.complete(job, "w1", clock.now(), "replied", posted)
    clock.advance(3600)
    await store.record_incoming(message(2, text="still nothing"), POLICY, clock.now())
    clock.advance(30)
    [nxt] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    contents = await store.load(nxt, "w1", history_limit=10)
    assert [(h.role, h.content) for h in contents.history] == [
        ("contact", "where is my order?"),
        ("assistant", "It ships tomorrow."),
    ]
    assert [m.content for m in contents.messages] == ["still nothing"]


async def test_transcript_update_reaches_the_buffered_message(store) -> None:
    clock = FakeClock()
    voice = Attachment(file_type="audio", data_url="https://cw/a.ogg")
    await store.record_incoming(message(1, text="", attachments=(voice,)), POLICY, clock.now())
    done = Attachment(file_type="audio", data_url="https://cw/a.ogg", transcript="hello there")
    assert await store.update_attachments(KEY, 1, (done,))
    assert not await store.update_attachments(KEY, 999, (done,))
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    [loaded] = (await store.load(job, "w1", 0)).messages
    assert loaded.attachments[0].transcript == "hello there"


async def test_concurrent_deliveries_for_one_conversation_share_one_buffer(store) -> None:
    clock = FakeClock()
    big = BufferPolicy(
        quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
    )
    results = await asyncio.gather(
        *(store.record_incoming(message(mid), big, clock.now()) for mid in range(1, 21)),
        *(store.record_incoming(message(mid), big, clock.now()) for mid in range(1, 6)),
    )
    assert sum(r.stored for r in results) == 20
    assert len({r.buffer_id for r in results if r.stored}) == 1
    seen = await snapshot(store)
    [buf] = seen.buffers
    assert len(seen.messages) == 20 and buf.message_count == 20


async def test_concurrent_workers_never_claim_the_same_buffer(store) -> None:
    clock = FakeClock()
    for conv in range(1, 41):
        await store.record_incoming(message(conv, ConversationKey(1, conv)), POLICY, clock.now())
    clock.advance(31)
    claims = await asyncio.gather(
        *(store.claim_due(clock.now(), f"w{i}", LEASE, 7) for i in range(8))
    )
    claimed = [job.buffer_id for batch in claims for job in batch]
    assert len(claimed) == len(set(claimed))
    rest = await store.claim_due(clock.now(), "late", LEASE, 100)
    assert len(claimed) + len(rest) == 40


async def test_a_newer_buffer_waits_while_an_older_one_is_unanswered(store) -> None:
    clock = FakeClock()
    await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(30)
    [older] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    clock.advance(1)
    await store.record_incoming(message(2), POLICY, clock.now())
    clock.advance(31)  # the newer buffer is due, but its conversation is still being answered
    assert await store.heartbeat("w1", [older], LEASE, clock.now()) == {older.job_id}
    assert await store.claim_due(clock.now(), "w2", LEASE, 10) == []
    # No busy loop: the only wake-up left is the older buffer's lease expiry.
    assert await store.next_wake_at(clock.now()) == clock.now() + LEASE
    assert await store.before_send(older, "w1") == "newer"
    into = await store.supersede(older, "w1", clock.now(), POLICY)
    assert into is not None
    [merged] = await store.claim_due(clock.now(), "w2", LEASE, 10)
    assert merged.buffer_id == into
    contents = await store.load(merged, "w2", history_limit=10)
    assert [m.chatwoot_message_id for m in contents.messages] == [1, 2]
    assert contents.check == "send"
    assert await store.before_send(merged, "w2") == "send"


async def test_a_delivery_that_waited_past_the_claim_is_ordered_after_the_claimed_buffer(
    store,
) -> None:
    """Intake reads its clock before it waits for the conversation's lock; a delivery that waited
    past the claim carries an earlier time than the buffer now being answered. It must still come
    after it: wait for it and be folded into nothing older, so the burst is answered once."""
    clock = FakeClock()
    t0 = clock.now()
    await store.record_incoming(message(2), POLICY, t0)
    clock.advance(31)
    [held] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    late = await store.record_incoming(message(1), POLICY, t0 - timedelta(milliseconds=1))
    assert late.opened_buffer
    # The late buffer is due, but waits while the held one is unanswered ...
    assert await store.claim_due(clock.now(), "w2", LEASE, 10) == []
    # ... and the held one sees it as newer, so it folds into it instead of replying.
    assert await store.before_send(held, "w1") == "newer"
    assert await store.supersede(held, "w1", clock.now(), POLICY) == late.buffer_id


async def _claimed(store, clock: FakeClock, *texts: str, key: ConversationKey = KEY):
    """One burst of ``texts``, due and claimed by w1."""
    for i, text in enumerate(texts, start=1):
        await store.record_incoming(message(i, key, text), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    return job


async def test_history_keeps_who_said_it_and_the_attachments_not_prompt_text(store) -> None:
    clock = FakeClock()
    voice = Attachment(file_type="audio", data_url="https://cw/a.ogg", transcript="late again")
    await store.record_incoming(message(1, text="", attachments=(voice,)), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    # Sent, but Chatwoot never confirmed it: not history, it may not have reached the contact.
    assert await store.complete(job, "w1", clock.now(), "replied", PostedMessage("reply", "Sorry!"))
    clock.advance(60)
    await store.record_incoming(message(2, text="hello?"), POLICY, clock.now())
    clock.advance(30)
    [nxt] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    [entry] = (await store.load(nxt, "w1", history_limit=10)).history
    assert (entry.role, entry.content, entry.attachments) == ("contact", "", (voice,))


async def test_the_send_intent_is_recorded_unless_the_job_is_lost(store) -> None:
    clock = FakeClock()
    job = await _claimed(store, clock, "hi")
    intent = PostedMessage("reply", "Hello!")
    assert await store.reserve_send(job, "someone else", intent, clock.now()) == "cancelled"
    assert (await store.load(job, "w1", 0)).posted == []
    assert await store.reserve_send(job, "w1", intent, clock.now()) == "send"
    # A second reservation of the same kind keeps the first intent.
    again = PostedMessage("reply", "Hello again!")
    assert await store.reserve_send(job, "w1", again, clock.now()) == "send"
    assert (await store.load(job, "w1", 0)).posted == [intent]


async def test_the_first_confirmation_of_a_send_wins(store) -> None:
    clock = FakeClock()
    job = await _claimed(store, clock, "hi")
    await store.reserve_send(job, "w1", PostedMessage("reply", "Hello!"), clock.now())
    marker = Marker(job.buffer_id, "reply")
    assert not await store.confirm_sent(OTHER, marker, 7)
    assert not await store.confirm_sent(KEY, Marker(job.buffer_id, "handoff_note"), 7)
    assert await store.confirm_sent(KEY, marker, 7)
    assert not await store.confirm_sent(KEY, marker, 8)
    assert await store.complete(job, "w1", clock.now(), "replied", PostedMessage("reply", "x", 9))
    contents = await store.load(job, "w1", 0)
    assert contents.posted == [PostedMessage("reply", "Hello!", 7)]
    assert contents.check == "cancelled"  # answered: nothing more to send


async def test_only_the_lease_holder_finishes_a_job(store) -> None:
    clock = FakeClock()
    job = await _claimed(store, clock, "hi")
    retry_at = clock.now() + timedelta(seconds=2)
    assert not await store.release_for_retry(job, "w2", "nope", retry_at)
    assert not await store.fail(job, "w2", "nope", clock.now())
    assert not await store.complete(job, "w2", clock.now(), "nope")
    assert await store.before_send(job, "w2") == "cancelled"
    seen = await snapshot(store)
    assert [(b.status, b.outcome) for b in seen.buffers] == [("processing", None)]
    assert await store.fail(job, "w1", "model refused", clock.now())
    seen = await snapshot(store)
    assert [(b.status, b.outcome) for b in seen.buffers] == [("failed", "model refused")]
    assert [(j.status, j.error_message) for j in seen.jobs] == [("failed", "model refused")]
    assert [c.state for c in seen.conversations] == ["idle"]


async def test_supersede_never_grows_a_buffer_past_its_size(store) -> None:
    clock = FakeClock()
    job = await _claimed(store, clock, "a", "b")
    for mid in (10, 11):  # a newer burst of two (the size cap is 3)
        await store.record_incoming(message(mid), POLICY, clock.now())
    assert await store.before_send(job, "w1") == "newer"
    assert await store.supersede(job, "w1", clock.now(), POLICY) is None
    assert await store.before_send(job, "w1") == "newer"  # nothing changed
    into = await store.supersede(job, "w1", clock.now(), replace(POLICY, max_size=4))
    seen = await snapshot(store)
    assert seen.buffer(job.buffer_id).status == "superseded"
    assert seen.buffer(into).message_count == 4
    assert {m.buffer_id for m in seen.messages} == {into}
    # The superseded job is finished: the holder can do nothing more with it.
    assert await store.before_send(job, "w1") == "cancelled"


async def _failed(store, clock: FakeClock, key: ConversationKey, error: str, *notes):
    """A buffer of ``key`` that gave up with ``error``, after recording ``notes``."""
    await store.record_incoming(message(key.conversation_id, key), POLICY, clock.now())
    clock.advance(30)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    for note in notes:
        await store.reserve_send(job, "w1", note, clock.now())
    clock.advance(1)
    assert await store.fail(job, "w1", error, clock.now())
    return job


async def test_operators_list_failed_buffers_newest_first(store) -> None:
    clock = FakeClock()
    first = await _failed(store, clock, KEY, "the model answered 400")
    second = await _failed(store, clock, OTHER, "Chatwoot answered 404")
    listed = await store.list_buffers("failed", 10)
    assert [(b.buffer_id, b.key, b.status, b.attempts, b.error, b.outcome) for b in listed] == [
        (second.buffer_id, OTHER, "failed", 1, "Chatwoot answered 404", "Chatwoot answered 404"),
        (first.buffer_id, KEY, "failed", 1, "the model answered 400", "the model answered 400"),
    ]
    assert [b.buffer_id for b in await store.list_buffers("failed", 1)] == [second.buffer_id]
    assert [b.buffer_id for b in await store.list_buffers("failed", 10, KEY)] == [first.buffer_id]
    assert await store.list_buffers("completed", 10) == []


async def test_a_replay_is_due_now_with_fresh_attempts_and_no_unsent_hand_over(store) -> None:
    clock = FakeClock()
    note = PostedMessage("failure_note", "could not answer; please take over")
    job = await _failed(store, clock, KEY, "gave up", note)
    clock.advance(3600)
    result, summary = await store.replay(job.buffer_id, clock.now())
    assert result == "scheduled"
    assert summary is not None and (summary.status, summary.attempts) == ("closed", 0)
    assert await store.next_wake_at(clock.now()) == clock.now()
    [again] = await store.claim_due(clock.now(), "w2", LEASE, 10)
    assert (again.buffer_id, again.attempts) == (job.buffer_id, 1)
    assert (await store.load(again, "w2", 10)).posted == []
    # Only a failed buffer can be replayed.
    result, summary = await store.replay(job.buffer_id, clock.now())
    assert result == "not_failed" and summary is not None and summary.status == "processing"
    assert await store.replay(uuid.uuid4(), clock.now()) == ("not_found", None)
