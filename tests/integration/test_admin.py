"""The admin API in-process, on both databases: the token guards it, failed buffers are listed,
and a replay puts exactly that buffer back in the queue without touching anything else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from sqlalchemy import select

from chatbuffer.app import Runtime
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.settings import load_settings
from chatbuffer.storage.tables import bot_replies, buffer_processing_jobs, message_buffer
from chatbuffer.testing import FakeClock
from tests.integration.test_web import serving, snapshot

TOKEN = "admin-test-token-3f9a61c0d2"
START = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
POLICY = BufferPolicy(timedelta(seconds=30), timedelta(seconds=300), 50)
LEASE = timedelta(seconds=10)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Admin:
    def __init__(self, runtime: Runtime, client: httpx2.AsyncClient, clock: FakeClock) -> None:
        self.runtime = runtime
        self.client = client
        self.clock = clock

    async def failed_buffer(
        self,
        conversation: int,
        error: str = "the model answered 400",
        note: PostedMessage | None = None,
    ):
        """A buffer that failed for good, as the worker leaves it; with ``note``, a hand-over
        note that was recorded but never reached Chatwoot."""
        store = self.runtime.store
        key = ConversationKey(1, conversation)
        message = InboundMessage(
            key=key,
            chatwoot_message_id=conversation * 10,
            content="hello?",
            kind="text",
            content_type="text",
            received_at=self.clock.now(),
        )
        await store.record_incoming(message, POLICY, self.clock.now())
        self.clock.advance(31)
        [job] = await store.claim_due(self.clock.now(), "w1", LEASE, 10)
        if note is not None:
            assert await store.reserve_send(job, "w1", note, self.clock.now()) == "send"
        assert await store.fail(job, "w1", error, self.clock.now())
        return job


@pytest.fixture
async def admin(db_url: str) -> AsyncIterator[Admin]:
    clock = FakeClock(START)
    runtime = Runtime(load_settings(database_url=db_url, admin_token=TOKEN), clock=clock)
    async with serving(runtime.asgi(with_worker=False)) as client:
        yield Admin(runtime, client, clock)


async def test_the_admin_api_is_off_without_a_token(db_url: str) -> None:
    runtime = Runtime(load_settings(database_url=db_url), clock=FakeClock(START))
    async with serving(runtime.asgi(with_worker=False)) as client:
        response = await client.get("/admin/buffers", headers=AUTH)
    assert response.status_code == 403
    assert response.json() == {"error": "the admin API is disabled; set ADMIN_TOKEN to enable it"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-000000000"}, {"Authorization": TOKEN}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_a_request_without_the_token_changes_nothing(admin: Admin, headers) -> None:
    job = await admin.failed_buffer(500)
    before = await snapshot(admin.runtime.store.engine)
    for response in [
        await admin.client.get("/admin/buffers", headers=headers),
        await admin.client.post(f"/admin/buffers/{job.buffer_id}/replay", headers=headers),
    ]:
        assert response.status_code == 401
        assert response.json() == {"error": "a valid admin token is required"}
        assert TOKEN not in response.text
    assert await snapshot(admin.runtime.store.engine) == before


async def test_failed_buffers_are_listed_with_their_error(admin: Admin) -> None:
    first = await admin.failed_buffer(501, "the model answered 400")
    second = await admin.failed_buffer(502, "Chatwoot answered 404 to POST …/messages")
    response = await admin.client.get("/admin/buffers", headers=AUTH)
    assert response.status_code == 200
    listed = response.json()["buffers"]
    assert [(b["buffer_id"], b["conversation_id"], b["status"], b["error"]) for b in listed] == [
        (str(second.buffer_id), 502, "failed", "Chatwoot answered 404 to POST …/messages"),
        (str(first.buffer_id), 501, "failed", "the model answered 400"),
    ]
    one = await admin.client.get(
        "/admin/buffers", params={"account_id": 1, "conversation_id": 501}, headers=AUTH
    )
    assert [b["buffer_id"] for b in one.json()["buffers"]] == [str(first.buffer_id)]
    completed = await admin.client.get("/admin/buffers?status=completed", headers=AUTH)
    assert completed.json() == {"buffers": []}


async def test_a_replay_schedules_the_failed_buffer_now_with_fresh_attempts(admin: Admin) -> None:
    job = await admin.failed_buffer(503)
    admin.clock.advance(3600)
    response = await admin.client.post(f"/admin/buffers/{job.buffer_id}/replay", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["buffer"]["status"] == "closed"
    async with admin.runtime.store.engine.connect() as conn:
        row = (await conn.execute(select(buffer_processing_jobs))).one()
        buf = (await conn.execute(select(message_buffer))).one()
    assert (row.status, row.attempts, row.scheduled_for) == ("scheduled", 0, admin.clock.now())
    assert (buf.status, buf.outcome) == ("closed", None)
    # A worker takes it at once, as its first attempt.
    [again] = await admin.runtime.store.claim_due(admin.clock.now(), "w2", LEASE, 10)
    assert (again.buffer_id, again.attempts) == (job.buffer_id, 1)


async def test_only_failed_buffers_can_be_replayed(admin: Admin) -> None:
    job = await admin.failed_buffer(504)
    replay = f"/admin/buffers/{job.buffer_id}/replay"
    assert (await admin.client.post(replay, headers=AUTH)).is_success
    before = await snapshot(admin.runtime.store.engine)
    again = await admin.client.post(replay, headers=AUTH)
    assert again.status_code == 409
    assert again.json() == {
        "error": f"buffer {job.buffer_id} is closed; only failed buffers can be replayed"
    }
    unknown = uuid.uuid4()
    missing = await admin.client.post(f"/admin/buffers/{unknown}/replay", headers=AUTH)
    assert (missing.status_code, missing.json()) == (404, {"error": f"no buffer {unknown}"})
    bad = await admin.client.post("/admin/buffers/42/replay", headers=AUTH)
    assert (bad.status_code, bad.json()) == (422, {"error": "'42' is not a buffer id"})
    assert await snapshot(admin.runtime.store.engine) == before


async def test_a_replay_that_would_answer_out_of_order_is_refused(admin: Admin) -> None:
    store = admin.runtime.store
    job = await admin.failed_buffer(506)
    newer = InboundMessage(
        key=job.key,
        chatwoot_message_id=5061,
        content="anyone?",
        kind="text",
        content_type="text",
        received_at=admin.clock.now(),
    )
    await store.record_incoming(newer, POLICY, admin.clock.now())
    admin.clock.advance(31)
    [answered] = await store.claim_due(admin.clock.now(), "w1", LEASE, 10)
    assert await store.complete(answered, "w1", admin.clock.now(), "replied")
    before = await snapshot(store.engine)
    response = await admin.client.post(f"/admin/buffers/{job.buffer_id}/replay", headers=AUTH)
    assert response.status_code == 409
    assert "replaying it would answer out of order" in response.json()["error"]
    assert await snapshot(store.engine) == before


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("status=broken", "unknown status 'broken'"),
        ("limit=0", "invalid request"),
        ("limit=ten", "invalid request"),
        ("account_id=1", "account_id and conversation_id go together"),
    ],
)
async def test_bad_listing_parameters_are_422(admin: Admin, query: str, error: str) -> None:
    response = await admin.client.get(f"/admin/buffers?{query}", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"].startswith(error)


async def test_a_replay_drops_a_hand_over_note_that_never_reached_chatwoot(admin: Admin) -> None:
    store = admin.runtime.store
    note = PostedMessage("failure_note", "could not answer; please take over")
    job = await admin.failed_buffer(505, "Chatwoot answered 404", note)

    response = await admin.client.post(f"/admin/buffers/{job.buffer_id}/replay", headers=AUTH)

    assert response.status_code == 200
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(bot_replies))).all() == []
    # So the replayed buffer is answered, not handed over again.
    [again] = await store.claim_due(admin.clock.now(), "w2", LEASE, 10)
    assert (await store.load(again, "w2", 10)).posted == []


# -- the admin page (the browser test is tests/e2e/test_admin_page.py) ---------------------


async def test_the_admin_page_is_off_without_a_token(db_url: str) -> None:
    runtime = Runtime(load_settings(database_url=db_url), clock=FakeClock(START))
    async with serving(runtime.asgi(with_worker=False)) as client:
        page = await client.get("/admin")
        login = await client.post("/admin/login", data={"token": TOKEN})
    assert page.status_code == login.status_code == 403
    assert "set ADMIN_TOKEN to enable it" in page.text
    assert 'name="token"' not in page.text


async def test_the_page_shows_nothing_before_signing_in_and_refuses_a_wrong_token(
    admin: Admin,
) -> None:
    await admin.failed_buffer(5)
    page = await admin.client.get("/admin")
    assert page.status_code == 200
    assert 'name="token"' in page.text and "1/5" not in page.text
    for path in ("/admin/panel",):
        assert (await admin.client.get(path)).status_code == 401
    refused = await admin.client.post("/admin/login", data={"token": "wrong-token-0000000"})
    assert refused.status_code == 401
    assert "That is not the admin token." in refused.text
    assert "chatbuffer_admin" not in refused.headers.get("set-cookie", "")
    # A forged cookie is no session.
    admin.client.cookies.set("chatbuffer_admin", TOKEN)
    forged = await admin.client.get("/admin/panel")
    assert forged.status_code == 401
    admin.client.cookies.clear()
    replay = await admin.client.post("/admin/replay", data={"buffer_id": str(uuid.uuid4())})
    assert replay.status_code == 401


async def test_signed_in_the_page_lists_a_failed_buffer_and_replays_it(admin: Admin) -> None:
    job = await admin.failed_buffer(6)
    signed = await admin.client.post("/admin/login", data={"token": TOKEN})
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie
    # The client keeps the session cookie from here on, as a browser would.
    assert admin.client.cookies.get("chatbuffer_admin")

    panel = await admin.client.get("/admin/panel")
    assert panel.status_code == 200
    assert f'data-buffer="{job.buffer_id}"' in panel.text
    assert "the model answered 400" in panel.text
    assert "message_buffering" in panel.text

    bad = await admin.client.post("/admin/replay", data={"buffer_id": "x"})
    assert bad.status_code == 422
    replayed = await admin.client.post("/admin/replay", data={"buffer_id": str(job.buffer_id)})
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"/admin?replayed={job.buffer_id}:scheduled"
    async with admin.runtime.store._engine.connect() as conn:
        status = (
            await conn.execute(
                select(buffer_processing_jobs.c.status).where(
                    buffer_processing_jobs.c.buffer_id == job.buffer_id
                )
            )
        ).scalar_one()
    assert status == "scheduled"
