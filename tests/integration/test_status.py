"""``chatbuffer status``'s numbers, read from SQLite and PostgreSQL while buffers move."""

from __future__ import annotations

from datetime import timedelta

from chatbuffer.doctor import status_text
from chatbuffer.domain.model import ConversationKey
from chatbuffer.storage import status
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.testing import FakeClock
from tests.integration.test_store import LEASE, POLICY, message

A = ConversationKey(1, 42)
B = ConversationKey(1, 43)
C = ConversationKey(2, 7)
D = ConversationKey(2, 8)


async def test_status_counts_open_due_processing_failed_and_the_workers_holding_leases(
    store: SqlBufferStore,
) -> None:
    clock = FakeClock()
    empty = await status.read(store.engine, clock.now())
    assert (empty.open, empty.due, empty.oldest_due, empty.workers) == (0, 0, None, {})

    for mid, key in enumerate((A, B, C), start=1):
        await store.record_incoming(message(mid, key), POLICY, clock.now())
    clock.advance(30)
    assert len(await store.claim_due(clock.now(), "worker-a", LEASE, 1)) == 1
    [given_up] = await store.claim_due(clock.now(), "worker-b", LEASE, 1)
    assert await store.fail(given_up, "worker-b", "gave up", clock.now())
    # The third stays due, unclaimed, for 12 s; a fourth conversation is still writing.
    clock.advance(12)
    await store.record_incoming(message(4, D), POLICY, clock.now())

    seen = await status.read(store.engine, clock.now())
    assert seen.open == 2
    assert seen.due == 1
    assert seen.oldest_due == timedelta(seconds=12)
    assert seen.waiting - seen.due == 1
    assert seen.failed == 1
    # worker-a's lease (10 s) ran out while it stalled: not live, but shown as expired.
    assert (seen.workers, seen.processing, seen.expired_leases) == ({}, 0, 1)
    status_of_seen = status_text(seen)
    assert "due buffers (waiting for a worker): 1; oldest due for 12.0 s" in status_of_seen
    assert "expired leases: 1" in status_of_seen

    # Another worker takes over the stalled buffer and the due one.
    assert len(await store.claim_due(clock.now(), "worker-c", LEASE, 10)) == 2
    live = await status.read(store.engine, clock.now())
    assert (live.workers, live.processing, live.expired_leases) == ({"worker-c": 2}, 2, 0)
    assert (live.due, live.oldest_due) == (0, None)

    text = status_text(live)
    assert "due buffers (waiting for a worker): 0; oldest due for none due" in text
    assert "workers holding a lease: 1: worker-c (2)" in text
    assert "failed: 1" in text

    newest = await status.latest_conversation(store.engine, None)
    assert newest == D
    assert await status.latest_conversation(store.engine, 1) in {A, B}
