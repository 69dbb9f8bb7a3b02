"""The promises every fault case ends on, checked against the database and the Chatwoot simulator.

Whatever broke on the way, once the service has settled:

1. every message the service accepted (answered 200) is in ``buffered_messages`` exactly once,
   and nothing it did not accept is;
2. every burst (a buffer holding messages) got exactly one public reply, or a recorded hand-off:
   one private note carrying its marker, the conversation ``open``, and the buffer ``failed`` or
   ``completed`` with an outcome starting "handed off";
3. no reply was sent twice: every public reply carries a ``buffer_id`` marker, no two carry the
   same one, and each belongs to a burst that was answered (never to one folded into a newer
   burst, whose reply would be stale).

``settle`` waits for the service to finish what it owes first, so a case only has to wait for its
own milestone (e.g. the first reply) before calling :func:`assert_invariants`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, select

from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.storage import database
from chatbuffer.storage.tables import (
    bot_replies,
    buffer_processing_jobs,
    buffered_messages,
    message_buffer,
)
from tests.e2e.conftest import ACCOUNT

#: Buffer and job states nothing will move on from.
FINISHED = frozenset({"completed", "failed", "cancelled", "superseded"})
_MESSAGES_PATH = re.compile(r"/api/v1/accounts/(\d+)/conversations/(\d+)/messages$")

#: A conversation and a Chatwoot message id.
MessageRef = tuple[int, int]


@dataclass(frozen=True)
class Burst:
    """One buffer as the database has it, with its messages in Chatwoot id order."""

    buffer_id: str
    conversation_id: int
    status: str
    outcome: str | None
    job_status: str | None
    attempts: int
    message_ids: tuple[int, ...]
    contents: tuple[str | None, ...]

    @property
    def replied(self) -> bool:
        return self.status == "completed" and (self.outcome or "").startswith("replied")

    @property
    def handed_off(self) -> bool:
        return self.status == "failed" or (
            self.status == "completed" and (self.outcome or "").startswith("handed off")
        )


@dataclass(frozen=True)
class Snapshot:
    """The service's tables, as far as the invariants need them."""

    buffers: list[Burst]
    stored: Counter[MessageRef]
    #: (buffer id, kind) -> Chatwoot message ids recorded in bot_replies (None: not confirmed).
    posted: dict[tuple[str, str], list[int | None]]

    @property
    def unfinished(self) -> list[Burst]:
        return [
            b
            for b in self.buffers
            if b.status not in FINISHED
            or (b.job_status is not None and b.job_status not in FINISHED)
        ]

    @property
    def bursts(self) -> list[Burst]:
        return [b for b in self.buffers if b.message_ids]

    def describe(self) -> str:
        return "\n".join(
            f"  buffer {b.buffer_id} conv {b.conversation_id}: {b.status}/{b.job_status} "
            f"attempts={b.attempts} outcome={b.outcome!r} messages={list(b.message_ids)}"
            for b in self.buffers
        )


@dataclass
class Verdict:
    """What the check found, for a case's own extra assertions."""

    snapshot: Snapshot
    #: buffer id -> its public reply.
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: buffer id -> its hand-off note.
    handoffs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def bursts(self) -> list[Burst]:
        return self.snapshot.bursts


def snapshot(database_url: str) -> Snapshot:
    """Read the tables once (blocking; call it in a thread from async code)."""
    engine = create_engine(database.sync_url(database_url))
    try:
        with engine.connect() as conn:
            buffer_rows = conn.execute(
                select(
                    message_buffer.c.id,
                    message_buffer.c.conversation_id,
                    message_buffer.c.status,
                    message_buffer.c.outcome,
                    buffer_processing_jobs.c.status.label("job_status"),
                    buffer_processing_jobs.c.attempts,
                )
                .select_from(
                    message_buffer.outerjoin(
                        buffer_processing_jobs,
                        buffer_processing_jobs.c.buffer_id == message_buffer.c.id,
                    )
                )
                .where(message_buffer.c.account_id == ACCOUNT)
                .order_by(message_buffer.c.created_at, message_buffer.c.id)
            ).all()
            message_rows = conn.execute(
                select(
                    buffered_messages.c.buffer_id,
                    buffered_messages.c.conversation_id,
                    buffered_messages.c.chatwoot_message_id,
                    buffered_messages.c.content,
                ).order_by(buffered_messages.c.chatwoot_message_id)
            ).all()
            reply_rows = conn.execute(
                select(
                    bot_replies.c.buffer_id, bot_replies.c.kind, bot_replies.c.chatwoot_message_id
                )
            ).all()
    finally:
        engine.dispose()
    members: dict[uuid.UUID, list[Any]] = {}
    for row in message_rows:
        members.setdefault(row.buffer_id, []).append(row)
    posted: dict[tuple[str, str], list[int | None]] = {}
    for reply in reply_rows:
        posted.setdefault((str(reply.buffer_id), reply.kind), []).append(reply.chatwoot_message_id)
    return Snapshot(
        buffers=[
            Burst(
                buffer_id=str(row.id),
                conversation_id=row.conversation_id,
                status=row.status,
                outcome=row.outcome,
                job_status=row.job_status,
                attempts=row.attempts or 0,
                message_ids=tuple(m.chatwoot_message_id for m in members.get(row.id, [])),
                contents=tuple(m.content for m in members.get(row.id, [])),
            )
            for row in buffer_rows
        ],
        stored=Counter((m.conversation_id, m.chatwoot_message_id) for m in message_rows),
        posted=posted,
    )


async def settle(database_url: str, timeout_s: float, quiet_s: float = 0.3) -> Snapshot:
    """Wait until no buffer or job is still open, and still none ``quiet_s`` later (a late
    duplicate POST would land meanwhile)."""
    deadline = time.monotonic() + timeout_s
    state = await asyncio.to_thread(snapshot, database_url)
    while state.unfinished:
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"the service did not settle within {timeout_s:.0f} s:\n{state.describe()}"
            )
        await asyncio.sleep(0.1)
        state = await asyncio.to_thread(snapshot, database_url)
    await asyncio.sleep(quiet_s)
    later = await asyncio.to_thread(snapshot, database_url)
    if later.unfinished:
        # Something new arrived or was reopened; settle on that too.
        return await settle(database_url, max(0.0, deadline - time.monotonic()) + 1, quiet_s)
    return later


def _marker(message: Mapping[str, Any]) -> str | None:
    attributes = message.get("content_attributes") or {}
    marker = attributes.get("chatbuffer") if isinstance(attributes, Mapping) else None
    buffer_id = marker.get("buffer_id") if isinstance(marker, Mapping) else None
    return str(buffer_id) if buffer_id is not None else None


async def assert_invariants(
    database_url: str,
    chatwoot: ChatwootSimulator,
    accepted: Collection[MessageRef],
    *,
    settle_timeout_s: float = 30.0,
) -> Verdict:
    """Settle, then check the three promises; every problem found is reported at once."""
    state = await settle(database_url, settle_timeout_s)
    problems: list[str] = []

    # 1. Every accepted message stored once; nothing stored that was not accepted.
    wanted = Counter(set(accepted))
    for ref in sorted(wanted | state.stored):
        if state.stored[ref] != 1 or ref not in wanted:
            problems.append(
                f"message {ref[1]} of conversation {ref[0]}: accepted={ref in wanted}, "
                f"stored {state.stored[ref]} time(s)"
            )

    # What Chatwoot shows, for every conversation the service knows or wrote to.
    conversations = {b.conversation_id for b in state.buffers} | {c for c, _ in accepted}
    for request in chatwoot.requests:
        match = _MESSAGES_PATH.search(request.path)
        if match and int(match[1]) == ACCOUNT:
            conversations.add(int(match[2]))
    public: dict[int, list[dict[str, Any]]] = {
        c: chatwoot.replies(ACCOUNT, c) for c in sorted(conversations)
    }
    notes: dict[int, list[dict[str, Any]]] = {
        c: chatwoot.private_notes(ACCOUNT, c) for c in sorted(conversations)
    }

    # 3. No reply twice, none unmarked, none for a burst that was not answered.
    verdict = Verdict(snapshot=state)
    replied = {b.buffer_id for b in state.bursts if b.replied}
    markers = Counter(_marker(m) for messages in public.values() for m in messages)
    for conversation, messages in public.items():
        for message in messages:
            buffer_id = _marker(message)
            if buffer_id is None:
                problems.append(
                    f"conversation {conversation}: public reply {message['id']} has no marker"
                )
            elif buffer_id not in replied:
                problems.append(
                    f"conversation {conversation}: public reply {message['id']} belongs to "
                    f"buffer {buffer_id}, which was not answered (a stale reply, or lost "
                    "bookkeeping)"
                )
            elif buffer_id in verdict.replies:
                first = verdict.replies[buffer_id]
                problems.append(
                    f"conversation {conversation}: buffer {buffer_id} was answered again: "
                    f"replies {first['id']} and {message['id']} ({message['content']!r})"
                )
            else:
                verdict.replies[buffer_id] = message

    # 2. Every burst: one reply, or a recorded hand-off.
    for burst in state.bursts:
        where = f"burst {burst.buffer_id} of conversation {burst.conversation_id}"
        own_notes = [n for n in notes[burst.conversation_id] if _marker(n) == burst.buffer_id]
        if burst.replied:
            if burst.buffer_id not in verdict.replies:
                problems.append(f"{where}: recorded as replied but Chatwoot shows no reply")
            else:
                reply_id = verdict.replies[burst.buffer_id]["id"]
                recorded = state.posted.get((burst.buffer_id, "reply"), [])
                if any(i is not None and i != reply_id for i in recorded):
                    problems.append(
                        f"{where}: bot_replies has {recorded}, Chatwoot's reply is {reply_id}"
                    )
        elif burst.handed_off:
            if len(own_notes) != 1:
                problems.append(f"{where}: handed off with {len(own_notes)} private notes")
            else:
                verdict.handoffs[burst.buffer_id] = own_notes[0]
            if markers[burst.buffer_id]:
                problems.append(f"{where}: handed off, yet also answered in public")
            status = chatwoot.status(ACCOUNT, burst.conversation_id)
            if status != "open":
                problems.append(f"{where}: handed off but the conversation is {status!r}")
        else:
            problems.append(
                f"{where}: ended {burst.status} ({burst.outcome!r}) with neither a reply nor a "
                "hand-off"
            )

    assert not problems, "\n".join(problems) + "\nstate:\n" + state.describe()
    return verdict
