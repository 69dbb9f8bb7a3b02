"""One service per database, driven from synchronous hypothesis tests, with the checks every
fuzzed request must pass.

The app is the one ``Runtime.asgi(with_worker=False)`` builds (through
``tests.integration.test_web.web_on``), so only the intake writes rows while fuzzing, and every
change in the database is the doing of the request just answered. One ``asyncio.Runner`` owns the
event loop for the app's whole life: the lifespan, the engine and every request share it, as they
would under uvicorn.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2
import orjson
from sqlalchemy import Connection, create_engine, delete

from chatbuffer.intake.payloads import MessageEvent
from chatbuffer.simulator import payloads
from chatbuffer.storage import database
from chatbuffer.storage.tables import (
    bot_replies,
    buffered_messages,
    feature_flags,
    history_messages,
    metadata,
)
from chatbuffer.testing import FakeClock
from chatbuffer.web.asgi import WEBHOOK_PATH
from tests.integration.test_web import (
    ACCOUNT,
    SECRET,
    Web,
    assert_clean_error,
    chunks,
    web_on,
)

#: Requests sent, by (generator, backend); the suite's last test adds them up.
SENT: Counter[tuple[str, str]] = Counter()
#: Answers, by (generator, HTTP status, "status" of a 200): shows what the generators reach.
ANSWERS: Counter[tuple[str, int, str]] = Counter()

# Above this many rows the harness empties the intake's tables, so the snapshot taken after
# every request stays around a millisecond instead of growing with the run.
RESET_AT_ROWS = 160

# What the well-formed delivery after a run uses; far from the ids the generators favour.
_HEALTH_CONVERSATION = 31_337
_HEALTH_MESSAGE = 7_777_777_777_777

HeaderList = list[tuple[bytes, bytes]]
#: Every row of every table: table name -> primary key -> the row's values in model order.
Rows = dict[str, dict[Any, tuple[Any, ...]]]

_COLUMNS = {table.name: table.c.keys() for table in metadata.sorted_tables}
#: Where each table's primary key sits in its row (several tables' first column is not unique).
_KEY = {
    table.name: tuple(table.c.keys().index(c.name) for c in table.primary_key.columns)
    for table in metadata.sorted_tables
}
_MESSAGE_COLUMN = {name: i for i, name in enumerate(_COLUMNS[buffered_messages.name])}
_ATTACHMENTS = _MESSAGE_COLUMN["attachments"]


def _select_everything(dialect: str) -> str:
    """One statement for every row of every table, each row a JSON object: one round trip (six
    cost PostgreSQL three milliseconds a request), and columns by name, not by position, which
    migrations that append columns make differ from the model's."""
    parts = []
    for name, columns in _COLUMNS.items():
        if dialect == "postgresql":
            row = "row_to_json(t)::text"
        else:
            row = "json_object(" + ", ".join(f"'{c}', t.{c}" for c in columns) + ")"
        parts.append(f"SELECT '{name}', {row} FROM {name} t")
    return " UNION ALL ".join(parts)


@dataclass(frozen=True)
class Request:
    """Exactly what goes over the wire; ``streamed`` sends the body chunked, without a length."""

    content: bytes
    headers: HeaderList = field(default_factory=list)
    streamed: bool = False


@dataclass(frozen=True)
class Exchange:
    request: Request
    response: httpx2.Response
    before: Rows
    after: Rows


def header_list(headers: Mapping[str, str]) -> HeaderList:
    """Headers as the bytes a server hands the app (latin-1, as HTTP/1.1 carries them)."""
    out: HeaderList = []
    for name, value in headers.items():
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogateescape")
        out.append((name.lower().encode("latin-1"), raw))
    return out


class Service:
    """The running app on one database, with the snapshot of its rows after the last request."""

    def __init__(self, runner: asyncio.Runner, web: Web, reader: Connection, backend: str) -> None:
        self.runner = runner
        self.web = web
        self.backend = backend
        self._reader = reader
        self._select = _select_everything(reader.dialect.name)
        self._rows: Rows | None = None

    @property
    def clock(self) -> FakeClock:
        return self.web.clock

    def now_stamp(self) -> int:
        return int(self.web.clock.now().timestamp())

    def sign(self, body: bytes, *, skew_s: int = 0) -> HeaderList:
        return header_list(payloads.sign(SECRET, body, self.now_stamp() + skew_s))

    # -- sending --------------------------------------------------------------------------

    def exchange(self, request: Request, generator: str) -> Exchange:
        """Send one request, check every invariant, and count it."""
        SENT[(generator, self.backend)] += 1
        before = self._rows if self._rows is not None else self.rows()
        response = self.runner.run(self._post(request))
        after = self._rows = self.rows()
        done = Exchange(request, response, before, after)
        try:
            check(done)
        except AssertionError as failure:
            # Hypothesis's own report of the failing input is blank under the schemathesis
            # pytest plugin, so the request travels with the failure.
            raise AssertionError(f"{failure}\n  request: {request!r}") from None
        outcome = str(response.json().get("status", "")) if response.status_code == 200 else ""
        ANSWERS[(generator, response.status_code, outcome)] += 1
        if sum(len(rows) for rows in after.values()) >= RESET_AT_ROWS:
            self._empty()
        return done

    async def _post(self, request: Request) -> httpx2.Response:
        content: Any = chunks(request.content)() if request.streamed else request.content
        return await self.web.client.post(WEBHOOK_PATH, content=content, headers=request.headers)

    def rows(self) -> Rows:
        """Every row of every table as the database stores it, read on the harness's own
        connection (no type processing: comparing raw values is stricter and much faster)."""
        found: Rows = {name: {} for name in _COLUMNS}
        for name, text in self._reader.exec_driver_sql(self._select):
            values = orjson.loads(text)
            row = tuple(values[c] for c in _COLUMNS[name])
            found[name][tuple(row[i] for i in _KEY[name])] = row
        return found

    def _empty(self) -> None:
        for table in reversed(metadata.sorted_tables):
            if table is not feature_flags:
                self._reader.execute(delete(table))
        self._rows = None

    # -- after the run --------------------------------------------------------------------

    def assert_healthy(self) -> None:
        """Liveness, readiness, and a normal delivery still buffered and stored."""
        self.runner.run(self._assert_healthy())

    async def _assert_healthy(self) -> None:
        client = self.web.client
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ready", "database": "ok"})
        # Past any human-takeover pause a fuzzed agent reply may have started.
        self.web.clock.advance(timedelta(hours=2))
        body = payloads.incoming_text(
            message_id=_HEALTH_MESSAGE,
            content="still there? order 4411",
            created_at=self.web.clock.now(),
            account_id=ACCOUNT,
            conversation_id=_HEALTH_CONVERSATION,
        )
        raw = orjson.dumps(body)
        before = self.rows()[buffered_messages.name]
        response = await client.post(WEBHOOK_PATH, content=raw, headers=self.sign(raw))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "buffered", response.text
        after = self.rows()[buffered_messages.name]
        stored = [row for key, row in after.items() if key not in before]
        assert len(stored) == 1, stored
        assert column(stored[0], "chatwoot_message_id") == _HEALTH_MESSAGE
        assert column(stored[0], "content") == "still there? order 4411"


@contextmanager
def running_service(url: str) -> Iterator[Service]:
    """The app on ``url``, its lifespan entered once for the whole test."""
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    # Blocking and autocommitting: a snapshot costs a few hundred microseconds, and it never
    # holds a transaction the app could wait on.
    reader_engine = create_engine(database.sync_url(url), isolation_level="AUTOCOMMIT")
    try:
        with reader_engine.connect() as reader, asyncio.Runner() as runner:
            opened = web_on(url)
            web = runner.run(opened.__aenter__())
            try:
                yield Service(runner, web, reader, backend)
            finally:
                runner.run(opened.__aexit__(None, None, None))
    finally:
        reader_engine.dispose()


# -- the invariants -----------------------------------------------------------------------


def check(done: Exchange) -> None:
    """What every answer to any request must satisfy."""
    response = done.response
    status = response.status_code
    assert status < 500, f"server error {status}: {response.text}"
    if not 200 <= status < 300:
        assert 400 <= status < 500, f"unexpected status {status}: {response.text}"
        assert_clean_error(response)
        assert set(response.json()) == {"error"}, response.text
        assert_unchanged(done.before, done.after)
        return
    assert status == 200, response.text
    answer = response.json()
    assert isinstance(answer, dict), response.text
    assert isinstance(answer.get("status"), str), response.text
    check_accepted(done, answer)


def assert_unchanged(before: Rows, after: Rows) -> None:
    if after == before:
        return
    for name, rows in after.items():
        added = [row for key, row in rows.items() if before[name].get(key) != row]
        removed = [row for key, row in before[name].items() if after[name].get(key) != row]
        assert not added and not removed, f"{name} changed: +{added} -{removed}"


def check_accepted(done: Exchange, answer: dict[str, Any]) -> None:
    """A 2xx may add rows and move buffers along, but never lose or alter a stored message."""
    before, after = done.before, done.after
    status = answer["status"]
    if status in {"ignored", "duplicate"}:
        assert_unchanged(before, after)
        return
    if status == "kept":
        # A contact's message the bot will not answer, kept only for the history: one row of
        # history_messages, nothing else.
        history = history_messages.name
        assert_unchanged({**before, history: {}}, {**after, history: {}})
        kept = [row for key, row in after[history].items() if key not in before[history]]
        assert all(key in after[history] for key in before[history]), "kept lost history"
        assert len(kept) <= 1, f"kept {len(kept)} history rows: {kept}"
        return
    for name, rows in before.items():
        lost = [row for key, row in rows.items() if key not in after[name]]
        assert not lost, f"{status}: rows of {name} disappeared: {lost}"
    for table in (feature_flags, bot_replies):
        assert after[table.name] == before[table.name], f"{status} changed {table.name}"

    sent = orjson.loads(done.request.content)
    old = before[buffered_messages.name]
    new = after[buffered_messages.name]
    for row_id, row in old.items():
        now = new[row_id]
        if now == row:
            continue
        # A later delivery of a voice note carries its transcript: only that message's
        # attachments may change, and only in an "updated" answer.
        assert status == "updated", f"{status} changed a stored message: {row} -> {now}"
        event = MessageEvent.model_validate(sent)
        assert (column(now, "conversation_id"), column(now, "chatwoot_message_id")) == (
            event.conversation.id,
            event.id,
        ), f"updated another message: {row} -> {now}"
        assert now[:_ATTACHMENTS] + now[_ATTACHMENTS + 1 :] == (
            row[:_ATTACHMENTS] + row[_ATTACHMENTS + 1 :]
        ), f"an update changed more than attachments: {row} -> {now}"
    added = [row for row_id, row in new.items() if row_id not in old]
    if status != "buffered":
        assert not added, f"{status} stored messages: {added}"
        return
    assert len(added) == 1, f"buffered {len(added)} messages: {added}"
    (stored,) = added
    event = MessageEvent.model_validate(sent)
    expected = {
        "chatwoot_message_id": event.id,
        "conversation_id": event.conversation.id,
        "content": event.content,
        "buffer_id": uuid.UUID(answer["buffer_id"]).hex,
    }
    actual = {name: column(stored, name) for name in expected}
    # PostgreSQL's JSON writes a uuid with dashes, SQLite stores the bare hex.
    actual["buffer_id"] = uuid.UUID(str(actual["buffer_id"])).hex
    assert actual == expected, f"stored {actual}, the delivery said {expected}"


def column(message: tuple[Any, ...], name: str) -> Any:
    """A column of a ``buffered_messages`` row."""
    return message[_MESSAGE_COLUMN[name]]
