"""What shadow mode and the live-controls API store, on both databases: a conversation's inbox
and contact read back for the canaries, a shadowed reply kept in the send ledger and shown by
``GET /admin/buffers/{id}`` as not sent, and the pause written through the admin API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbuffer.app import Runtime
from chatbuffer.domain import control
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.control import Subject
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.domain.shadow import shadow_message_id
from chatbuffer.settings import load_settings
from chatbuffer.storage.subjects import SqlSubjects
from chatbuffer.testing import FakeClock
from tests.integration.test_web import serving

TOKEN = "shadow-test-token-61b0c9e2aa"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
POLICY = BufferPolicy(timedelta(seconds=30), timedelta(seconds=300), 50)
LEASE = timedelta(seconds=10)


def message(key: ConversationKey, message_id: int, at: datetime, inbox: int) -> InboundMessage:
    return InboundMessage(
        key=key,
        chatwoot_message_id=message_id,
        content=f"message {message_id}",
        kind="text",
        content_type="text",
        received_at=at,
        sender={"id": 77, "name": "Ana"},
        conversation={"id": key.conversation_id, "inbox_id": inbox},
    )


async def test_shadow_replies_and_subjects_are_stored_and_read_back(db_url: str) -> None:
    clock = FakeClock(START)
    runtime = Runtime(load_settings(database_url=db_url, admin_token=TOKEN), clock=clock)
    key = ConversationKey(1, 40)
    async with serving(runtime.asgi(with_worker=False)) as client:
        store = runtime.store
        subjects = SqlSubjects(store.engine)
        assert await subjects.subject(key) == Subject(key)
        await store.record_incoming(message(key, 401, clock.now(), inbox=4), POLICY, clock.now())
        assert await subjects.subject(key) == Subject(key, inbox_id=4, contact_id=77)
        clock.advance(1)
        # The conversation moved inbox: its newest message says where it is now.
        await store.record_incoming(message(key, 402, clock.now(), inbox=5), POLICY, clock.now())
        assert await subjects.subject(key) == Subject(key, inbox_id=5, contact_id=77)

        clock.advance(31)
        [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
        intent = PostedMessage("reply", "Your order ships today.")
        assert await store.reserve_send(job, "w1", intent, clock.now()) == "send"
        shadow_id = shadow_message_id(Marker(job.buffer_id, "reply"))
        posted = PostedMessage("reply", intent.content, shadow_id)
        assert await store.complete(job, "w1", clock.now(), "replied", posted)

        shown = await client.get(f"/admin/buffers/{job.buffer_id}", headers=AUTH)
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["status"] == "completed"
        assert [m["content"] for m in body["messages"]] == ["message 401", "message 402"]
        assert body["answer"] == {
            "kind": "reply",
            "content": "Your order ships today.",
            "chatwoot_message_id": None,
            "sent": False,
            "shadow": True,
        }

        paused = await client.post("/admin/pause", json={"by": "ana"}, headers=AUTH)
        assert paused.status_code == 200
        stored = await runtime.control_access().read_controls()
        pause = control.parse(stored.flags, stored.values).pause
        assert (pause.paused, pause.paused_by, pause.paused_at) == (True, "ana", clock.now())
