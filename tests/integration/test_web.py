"""The HTTP surface in-process, on both databases: status, JSON body and the rows behind them.

The app is the one ``Runtime.asgi`` builds, so the settings reach the web layer exactly as in
production, and its own lifespan opens and closes the runtime. Requests go through
``httpx2.ASGITransport``; the clock is a ``FakeClock``, so the signature window is exact and
nothing waits on real time.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.app import Runtime
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import InboundMessage
from chatbuffer.domain.ports import PostedMessage
from chatbuffer.intake.webhook import IntakeRules, WebhookIntake
from chatbuffer.observability.events import FanOut
from chatbuffer.settings import load_settings
from chatbuffer.simulator import payloads
from chatbuffer.storage import database
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import (
    bot_replies,
    buffer_processing_jobs,
    buffered_messages,
    conversations,
    message_buffer,
    metadata,
)
from chatbuffer.testing import FakeClock
from chatbuffer.web.asgi import WEBHOOK_PATH, WebConfig, create_asgi_app
from tests.conftest import scratch_postgres

SECRET = "web-test-secret-9d41c7b2e8"
ACCOUNT = 1
CONVERSATION = 1532
# A realistic message_created body is ~2.2 KB, so the cap sits just above one of them.
MAX_BODY = 4096
MAX_AGE_S = 300
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
STORE_FAILED = {"error": "the service could not store the event; try again"}
UNAVAILABLE = {"status": "unavailable", "database": "unreachable"}
UNREACHABLE_PASSWORD = "hunter2"

Rows = dict[str, list[tuple[Any, ...]]]
Content = bytes | Callable[[], AsyncIterator[bytes]]


def assert_clean_error(response: httpx2.Response) -> None:
    """An error answer is a small JSON object that leaks neither the secret nor our internals."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) or body == UNAVAILABLE, body
    for leak in (
        SECRET,
        UNREACHABLE_PASSWORD,
        "Traceback",
        'File "',
        "sqlalchemy",
        "psycopg",
        "OperationalError",
    ):
        assert leak not in response.text, response.text


async def snapshot(engine: AsyncEngine) -> Rows:
    """Every row of every table, in a stable order."""
    async with engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(row) for row in (await conn.execute(select(table))).all()), key=repr
            )
            for table in metadata.sorted_tables
        }


def data_rows(rows: Rows) -> dict[str, int]:
    """How many rows each table the intake writes holds."""
    return {
        name: len(rows[name])
        for name in (
            buffered_messages.name,
            message_buffer.name,
            buffer_processing_jobs.name,
            conversations.name,
        )
    }


def chunks(body: bytes, size: int = 1000) -> Callable[[], AsyncIterator[bytes]]:
    """A streamed body: httpx2 sends it chunked, without Content-Length."""

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    return stream


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    """Run ``app``'s lifespan (as uvicorn would) and talk to it in-process."""
    async with app.router.lifespan_context(app):
        # 5xx answers come from the app's own handler; do not re-raise the cause in the test.
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@dataclass
class Web:
    clock: FakeClock
    client: httpx2.AsyncClient
    runtime: Runtime | None = None
    next_message_id: int = 7000

    @property
    def engine(self) -> AsyncEngine:
        assert self.runtime is not None
        return self.runtime.store.engine

    def signed(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = int(self.clock.now().timestamp()) if timestamp is None else timestamp
        return payloads.sign(SECRET, body, stamp)

    async def post(
        self, content: Content, headers: dict[str, str] | None = None
    ) -> httpx2.Response:
        body = content() if callable(content) else content
        response = await self.client.post(WEBHOOK_PATH, content=body, headers=headers)
        if response.status_code >= 400:
            assert_clean_error(response)
        return response

    async def deliver(self, body: Any) -> httpx2.Response:
        """Deliver ``body`` the way Chatwoot does: JSON, signed now."""
        raw = orjson.dumps(body)
        return await self.post(raw, self.signed(raw))

    def incoming(self, *, message_id: int | None = None, **where: Any) -> dict[str, Any]:
        if message_id is None:
            self.next_message_id += 1
            message_id = self.next_message_id
        where.setdefault("account_id", ACCOUNT)
        where.setdefault("conversation_id", CONVERSATION)
        content = where.pop("content", f"message {message_id}")
        return payloads.incoming_text(
            message_id=message_id, content=content, created_at=self.clock.now(), **where
        )

    async def rows(self) -> Rows:
        return await snapshot(self.engine)


def make_runtime(url: str, clock: FakeClock) -> Runtime:
    settings = load_settings(
        database_url=url,
        chatwoot_webhook_secret=SECRET,
        chatwoot_account_id=ACCOUNT,
        webhook_max_body_bytes=MAX_BODY,
        webhook_signature_max_age_s=MAX_AGE_S,
        message_buffer_duration_ms=30_000,
        max_buffer_age_ms=300_000,
        max_buffer_size=50,
        bot_active_statuses="pending",
    )
    return Runtime(settings, clock=clock)


@asynccontextmanager
async def web_on(url: str) -> AsyncIterator[Web]:
    clock = FakeClock(START)
    runtime = make_runtime(url, clock)
    async with serving(runtime.asgi(with_worker=False)) as client:
        yield Web(runtime=runtime, clock=clock, client=client)


@pytest.fixture
async def web(db_url: str) -> AsyncIterator[Web]:
    async with web_on(db_url) as opened:
        yield opened


# -- accepted messages ----------------------------------------------------------------------


async def test_a_signed_incoming_message_is_buffered(web: Web) -> None:
    before = await web.rows()
    response = await web.deliver(web.incoming(message_id=9001, content="hi, order 4411?"))

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "buffered"
    assert body["messages"] == 1
    due = START + timedelta(seconds=30)
    assert datetime.fromisoformat(body["due_at"]) == due

    rows = await web.rows()
    assert data_rows(rows) == {
        "buffered_messages": 1,
        "message_buffer": 1,
        "buffer_processing_jobs": 1,
        "conversations": 1,
    }
    assert rows["feature_flags"] == before["feature_flags"]
    async with web.engine.connect() as conn:
        message = (await conn.execute(select(buffered_messages))).one()
        buffer = (await conn.execute(select(message_buffer))).one()
        job = (await conn.execute(select(buffer_processing_jobs))).one()
    assert str(buffer.id) == body["buffer_id"]
    assert (buffer.account_id, buffer.conversation_id) == (ACCOUNT, CONVERSATION)
    assert (buffer.status, buffer.message_count) == ("active", 1)
    assert buffer.buffer_end_time == due
    assert message.buffer_id == buffer.id
    assert (message.chatwoot_message_id, message.content) == (9001, "hi, order 4411?")
    assert message.received_at == START
    assert (job.buffer_id, job.status, job.scheduled_for) == (buffer.id, "scheduled", due)


async def test_a_second_message_extends_the_same_buffer(web: Web) -> None:
    first = (await web.deliver(web.incoming())).json()
    web.clock.advance(5)
    second = (await web.deliver(web.incoming())).json()

    assert second["status"] == "buffered"
    assert second["buffer_id"] == first["buffer_id"]
    assert second["messages"] == 2
    assert datetime.fromisoformat(second["due_at"]) == START + timedelta(seconds=35)
    assert data_rows(await web.rows())["buffered_messages"] == 2
    assert data_rows(await web.rows())["message_buffer"] == 1


async def test_a_streamed_body_without_content_length_is_accepted(web: Web) -> None:
    raw = orjson.dumps(web.incoming(message_id=9002))
    assert len(raw) > 1000  # really arrives in several chunks

    response = await web.post(chunks(raw), web.signed(raw))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "buffered"
    assert data_rows(await web.rows())["buffered_messages"] == 1


async def test_a_body_of_exactly_the_cap_is_accepted(web: Web) -> None:
    body = web.incoming(message_id=9003)
    # Chatwoot adds fields between versions; an unknown one pads the body to the byte.
    body["padding"] = ""
    body["padding"] = "x" * (MAX_BODY - len(orjson.dumps(body)))
    raw = orjson.dumps(body)
    assert len(raw) == MAX_BODY

    response = await web.post(raw, web.signed(raw))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "buffered"


@pytest.mark.parametrize("skew_s", [-MAX_AGE_S, MAX_AGE_S])
async def test_a_signature_at_the_edge_of_the_window_is_accepted(web: Web, skew_s: int) -> None:
    raw = orjson.dumps(web.incoming())
    stamp = int(web.clock.now().timestamp()) + skew_s

    response = await web.post(raw, web.signed(raw, timestamp=stamp))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "buffered"


# -- rejected requests ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request the service must refuse; ``build`` returns (content, headers)."""

    status: int
    build: Callable[[Web], tuple[Content, dict[str, str] | None]]


def _signed_raw(raw: bytes) -> Callable[[Web], tuple[Content, dict[str, str] | None]]:
    return lambda web: (raw, web.signed(raw))


def _signed_json(body: Any) -> Callable[[Web], tuple[Content, dict[str, str] | None]]:
    return _signed_raw(orjson.dumps(body))


def _message_with(**changes: Any) -> Callable[[Web], tuple[Content, dict[str, str] | None]]:
    def build(web: Web) -> tuple[Content, dict[str, str] | None]:
        body = web.incoming(message_id=8500)
        for path, value in changes.items():
            target = body
            *parents, leaf = path.split("__")
            for parent in parents:
                target = target[parent]
            if value is _DROP:
                del target[leaf]
            else:
                target[leaf] = value
        raw = orjson.dumps(body)
        return raw, web.signed(raw)

    return build


_DROP = object()


def _oversized(web: Web) -> bytes:
    raw = orjson.dumps(web.incoming(message_id=8501, content="x" * MAX_BODY))
    assert len(raw) > MAX_BODY
    return raw


def _signed_with(
    *,
    secret: str = SECRET,
    skew_s: int = 0,
    timestamp: str | None = None,
    drop: tuple[str, ...] = (),
    tamper: bool = False,
) -> Callable[[Web], tuple[Content, dict[str, str] | None]]:
    def build(web: Web) -> tuple[Content, dict[str, str] | None]:
        raw = orjson.dumps(web.incoming(message_id=8502))
        headers = payloads.sign(secret, raw, int(web.clock.now().timestamp()) + skew_s)
        if timestamp is not None:
            headers["X-Chatwoot-Timestamp"] = timestamp
        for name in drop:
            del headers[name]
        if tamper:
            raw = raw.replace(b"message 8502", b"message 8503")
        return raw, headers

    return build


BAD_REQUESTS = {
    # 400: not JSON at all
    "not-json": Bad(400, _signed_raw(b'{"event": "message_created", ')),
    "empty-body": Bad(400, _signed_raw(b"")),
    "not-utf8": Bad(400, _signed_raw(b'{"event": "\xff\xfe"}')),
    # 413: over the cap, declared or streamed
    "over-cap-with-length": Bad(413, lambda web: (_oversized(web), web.signed(_oversized(web)))),
    "over-cap-chunked": Bad(
        413, lambda web: (chunks(_oversized(web)), web.signed(_oversized(web)))
    ),
    "over-cap-unsigned": Bad(413, lambda web: (_oversized(web), None)),
    # 401: signature missing, wrong or outside the window
    "unsigned": Bad(401, lambda web: (orjson.dumps(web.incoming(message_id=8504)), None)),
    "no-signature-header": Bad(401, _signed_with(drop=("X-Chatwoot-Signature",))),
    "no-timestamp-header": Bad(401, _signed_with(drop=("X-Chatwoot-Timestamp",))),
    "wrong-secret": Bad(401, _signed_with(secret="not-the-secret")),
    "body-changed-after-signing": Bad(401, _signed_with(tamper=True)),
    "stale": Bad(401, _signed_with(skew_s=-MAX_AGE_S - 1)),
    "from-the-future": Bad(401, _signed_with(skew_s=MAX_AGE_S + 1)),
    "timestamp-not-a-number": Bad(401, _signed_with(timestamp="yesterday")),
    # 422: JSON, but not an event we can read
    "json-array": Bad(422, _signed_json([{"event": "message_created"}])),
    "json-string": Bad(422, _signed_json("message_created")),
    "json-null": Bad(422, _signed_json(None)),
    "no-event": Bad(422, _message_with(event=_DROP)),
    "event-not-a-string": Bad(422, _message_with(event=5)),
    "event-empty": Bad(422, _message_with(event="")),
    "message-id-not-a-number": Bad(422, _message_with(id="abc")),
    "message-id-zero": Bad(422, _message_with(id=0)),
    "conversation-not-an-object": Bad(422, _message_with(conversation=[1532])),
    "conversation-id-missing": Bad(422, _message_with(conversation__id=_DROP)),
    "account-id-not-a-number": Bad(422, _message_with(account__id="acme")),
    "message-type-missing": Bad(422, _message_with(message_type=_DROP)),
    "private-not-a-boolean": Bad(422, _message_with(private="maybe")),
    "attachments-not-a-list": Bad(422, _message_with(attachments={"file_type": "image"})),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
async def test_a_rejected_request_changes_nothing(web: Web, case: Bad) -> None:
    stored = await web.deliver(web.incoming(message_id=8000, content="the one stored message"))
    assert stored.status_code == 200
    before = await web.rows()

    content, headers = case.build(web)
    response = await web.post(content, headers)

    assert response.status_code == case.status, response.text
    assert set(response.json()) == {"error"}
    assert await web.rows() == before
    # The stored message's buffer is still the one a new message joins.
    follow_up = (await web.deliver(web.incoming())).json()
    assert follow_up["status"] == "buffered"
    assert follow_up["buffer_id"] == stored.json()["buffer_id"]
    assert follow_up["messages"] == 2


async def test_a_captured_request_cannot_be_replayed_after_the_window(web: Web) -> None:
    raw = orjson.dumps(web.incoming(message_id=8600))
    headers = web.signed(raw)
    web.clock.advance(MAX_AGE_S + 1)
    before = await web.rows()

    response = await web.post(raw, headers)

    assert response.status_code == 401
    assert "X-Chatwoot-Timestamp" in response.json()["error"]
    assert await web.rows() == before


async def test_unknown_routes_and_methods_answer_json(web: Web) -> None:
    missing = await web.client.get("/nope")
    wrong_method = await web.client.get(WEBHOOK_PATH)

    assert missing.status_code == 404
    assert wrong_method.status_code == 405
    for response in (missing, wrong_method):
        assert_clean_error(response)


# -- events that need no buffering ----------------------------------------------------------


IGNORED: dict[str, tuple[Callable[[Web], dict[str, Any]], str]] = {
    "private-note": (
        lambda web: payloads.private_note(
            account_id=ACCOUNT,
            conversation_id=CONVERSATION,
            message_id=8700,
            content="call her back tomorrow",
            created_at=web.clock.now(),
        ),
        "private note",
    ),
    "unknown-event": (
        lambda _web: {"event": "contact_created", "id": 77, "name": "Ana", "account": {"id": 1}},
        "event contact_created is not handled",
    ),
    "other-account": (
        lambda web: web.incoming(message_id=8702, account_id=ACCOUNT + 1),
        "account is not served by this chatbuffer",
    ),
    "bot-own-reply": (
        lambda web: payloads.bot_reply(
            account_id=ACCOUNT,
            conversation_id=CONVERSATION,
            message_id=8703,
            content="Your order ships today.",
            created_at=web.clock.now(),
            content_attributes={"chatbuffer": {"buffer_id": str(uuid.uuid4())}},
        ),
        "the bot's own reply",
    ),
}


@pytest.mark.parametrize("case", list(IGNORED.values()), ids=list(IGNORED))
async def test_an_event_that_needs_nothing_is_ignored(
    web: Web, case: tuple[Callable[[Web], dict[str, Any]], str]
) -> None:
    build, reason = case
    before = await web.rows()

    response = await web.deliver(build(web))

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ignored", "reason": reason}
    assert await web.rows() == before
    assert data_rows(before) == dict.fromkeys(data_rows(before), 0)


async def test_a_message_in_a_resolved_conversation_is_only_kept_for_the_history(
    web: Web,
) -> None:
    before = await web.rows()

    body = web.incoming(message_id=8701, content="thanks, all good now", status="resolved")
    response = await web.deliver(body)
    again = await web.deliver(body)

    assert response.json() == {"status": "kept", "reason": "conversation is resolved"}
    assert again.json() == response.json()
    after = await web.rows()
    # No buffer, no job: the bot never answers it; one history row, even when redelivered.
    assert data_rows(after) == data_rows(before)
    kept = after["history_messages"]
    assert len(kept) == 1
    assert "thanks, all good now" in kept[0] and "contact" in kept[0]


async def test_a_redelivered_message_is_a_duplicate_and_changes_nothing(web: Web) -> None:
    body = web.incoming(message_id=8800, content="where is my parcel?")
    first = await web.deliver(body)
    assert first.json()["status"] == "buffered"
    web.clock.advance(3)
    before = await web.rows()

    again = await web.deliver(body)  # a new delivery: new X-Chatwoot-Delivery, new signature

    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "message_id": 8800}
    assert await web.rows() == before


@pytest.mark.parametrize("kind", ["agent-dashboard", "whatsapp-phone-echo"])
async def test_a_human_reply_cancels_the_open_buffer(web: Web, kind: str) -> None:
    buffered = (await web.deliver(web.incoming(message_id=8900))).json()
    web.clock.advance(4)
    where: dict[str, Any] = {
        "account_id": ACCOUNT,
        "conversation_id": CONVERSATION,
        "message_id": 8901,
        "content": "I'll check that for you",
        "created_at": web.clock.now(),
    }
    reply = (
        payloads.agent_reply(**where) if kind == "agent-dashboard" else payloads.phone_echo(**where)
    )

    response = await web.deliver(reply)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "cancelled",
        "buffers": 1,
        "reason": "a human agent answered",
    }
    async with web.engine.connect() as conn:
        buffer = (await conn.execute(select(message_buffer))).one()
        job = (await conn.execute(select(buffer_processing_jobs))).one()
    assert str(buffer.id) == buffered["buffer_id"]
    assert buffer.status == "cancelled"
    assert buffer.processed_at == web.clock.now()
    assert job.status == "cancelled"
    # The agent's message is not a customer message: nothing new was buffered.
    assert data_rows(await web.rows())["buffered_messages"] == 1


# -- health and readiness -------------------------------------------------------------------


async def test_health_and_readiness(web: Web) -> None:
    health = await web.client.get("/healthz")
    ready = await web.client.get("/readyz")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "database": "ok"})


@dataclass
class Vanishing:
    """A migrated database of its own that a test can make disappear."""

    url: str
    vanish: Callable[[], None]


@pytest.fixture(params=["sqlite", "postgres"])
def vanishing_db(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[Vanishing]:
    if request.param == "sqlite":
        folder = tmp_path / "vanishing"
        folder.mkdir()
        shutil.copy(sqlite_template, folder / "chatbuffer.db")
        yield Vanishing(f"sqlite:///{folder / 'chatbuffer.db'}", lambda: shutil.rmtree(folder))
        return
    with scratch_postgres("vanish") as scratch:
        database.migrate(scratch.url)
        yield Vanishing(scratch.url, scratch.drop)


async def test_readiness_fails_once_the_database_is_gone(
    vanishing_db: Vanishing, caplog: pytest.LogCaptureFixture
) -> None:
    async with web_on(vanishing_db.url) as web:
        assert (await web.client.get("/readyz")).status_code == 200

        vanishing_db.vanish()
        # Drop pooled connections: a SQLite connection keeps reading a deleted file.
        await web.engine.dispose()

        ready = await web.client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, UNAVAILABLE)
        assert_clean_error(ready)
        caplog.clear()
        stored = await web.deliver(web.incoming())
        assert (stored.status_code, stored.json()) == (500, STORE_FAILED)
        # One line for the operator, not a traceback per refused webhook.
        [logged] = [r for r in caplog.records if r.name.startswith("chatbuffer")]
        assert logged.levelname == "WARNING" and logged.exc_info is None
        assert logged.getMessage().startswith("webhook not stored: the database is unavailable")
        # The process itself is fine.
        assert (await web.client.get("/healthz")).status_code == 200


async def _policy(message: InboundMessage) -> BufferPolicy:
    return BufferPolicy(
        quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_unreachable_database_is_unavailable(tmp_path: Path, backend: str) -> None:
    url = (
        f"postgresql://user:{UNREACHABLE_PASSWORD}@127.0.0.1:1/db"
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 'no-such-folder' / 'chatbuffer.db'}"
    )
    engine = database.create_engine(url, pool_size=1)
    store = SqlBufferStore(engine, database_clock=False)
    clock = FakeClock(START)
    intake = WebhookIntake(
        store=store,
        sends=store,
        clock=clock,
        observer=FanOut([]),
        rules=IntakeRules(active_statuses=frozenset({"pending"}), account_id=ACCOUNT),
        policy=_policy,
    )
    app = create_asgi_app(
        handle=intake.handle,
        ping=store.ping,
        clock=clock,
        config=WebConfig(
            webhook_secret=SECRET, max_body_bytes=MAX_BODY, signature_max_age_s=MAX_AGE_S
        ),
    )
    try:
        async with serving(app) as client:
            web = Web(clock=clock, client=client)
            ready = await client.get("/readyz")
            stored = await web.deliver(web.incoming())
            health = await client.get("/healthz")
    finally:
        await engine.dispose()

    assert (ready.status_code, ready.json()) == (503, UNAVAILABLE)
    assert_clean_error(ready)
    assert (stored.status_code, stored.json()) == (500, STORE_FAILED)
    assert health.status_code == 200


async def test_the_echo_of_the_bot_s_reply_confirms_the_recorded_intent(web: Web) -> None:
    assert web.runtime is not None
    store = web.runtime.store
    await web.deliver(web.incoming())
    web.clock.advance(timedelta(seconds=31))
    [job] = await store.claim_due(web.clock.now(), "w1", timedelta(seconds=10), 1)
    intent = PostedMessage("reply", "Your order ships today.")
    assert await store.reserve_send(job, "w1", intent, web.clock.now()) == "send"

    response = await web.deliver(
        payloads.bot_reply(
            account_id=ACCOUNT,
            conversation_id=CONVERSATION,
            message_id=8801,
            content=intent.content,
            created_at=web.clock.now(),
            content_attributes=Marker(job.buffer_id, "reply").attributes(),
        )
    )

    assert response.json() == {"status": "ignored", "reason": "the bot's own reply"}
    async with web.engine.connect() as conn:
        confirmed = (await conn.execute(select(bot_replies.c.chatwoot_message_id))).scalars().all()
    assert confirmed == [8801]
