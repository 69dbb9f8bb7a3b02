"""``MemoryStore``: every port of the store, in memory, with the SQL store's semantics.

Buffers, jobs, leases, the one-conversation-at-a-time rule, supersede and the send ledger behave
as in :class:`chatbuffer.storage.repository.SqlBufferStore`, and the buffer rules are the same
:mod:`chatbuffer.domain.buffer`; ``tests/integration/test_store.py`` runs one contract against
both, so they cannot drift. Each call runs without awaiting in between, so it is as atomic as the
SQL store's transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from chatbuffer.domain import buffer
from chatbuffer.domain.marker import Marker, ReplyKind
from chatbuffer.domain.model import (
    Assessment,
    Attachment,
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
)
from chatbuffer.domain.ports import (
    BufferContents,
    BufferSummary,
    ClaimedJob,
    IntakeResult,
    PostedMessage,
    ReplayResult,
    SendCheck,
    WakeCallback,
)

#: Buffers a worker may take: still collecting but due, closed and waiting, or held by a worker
#: whose lease ran out.
_CLAIMABLE = ("active", "closed", "processing")

#: A newer buffer in one of these states makes a replay answer out of order.
_ANSWERED = ("processing", "completed", "cancelled")

#: As the SQL store: the default Chatwoot timeout plus a margin.
DEFAULT_SEND_HOLD = timedelta(seconds=12)


@dataclass
class Conversation:
    key: ConversationKey
    message_count: int = 0
    state: str = "idle"
    active_buffer_id: uuid.UUID | None = None
    human_active_until: datetime | None = None


@dataclass
class Buffer:
    id: uuid.UUID
    key: ConversationKey
    window: buffer.BufferWindow
    due: datetime
    status: str
    seq: int
    updated_at: datetime
    outcome: str | None = None


@dataclass
class Job:
    id: uuid.UUID
    buffer_id: uuid.UUID
    key: ConversationKey
    scheduled_for: datetime
    status: str = "scheduled"
    attempts: int = 0
    error_message: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass
class Message:
    buffer_id: uuid.UUID
    message: InboundMessage
    processed: bool = False


@dataclass
class Reply:
    buffer_id: uuid.UUID
    key: ConversationKey
    kind: ReplyKind
    content: str
    chatwoot_message_id: int | None
    sent_at: datetime
    part: int = 0


@dataclass
class HistoryRow:
    """A ``history_messages`` row: an agent's message or a turn fetched from Chatwoot."""

    key: ConversationKey
    entry: HistoryEntry
    source: str


@dataclass
class Memory:
    """A ``conversation_memory`` row."""

    summary: ConversationSummary | None = None
    backfilled_at: datetime | None = None


@dataclass
class MemoryStore:
    """Implements ``IntakeStore``, ``JobQueue``, ``WakeSignals``, ``ConversationHistory``,
    ``ConversationMemory``, ``SendLedger`` and ``BufferAdmin``; the fields are
    open for assertions."""

    conversations: dict[ConversationKey, Conversation] = field(default_factory=dict)
    buffers: dict[uuid.UUID, Buffer] = field(default_factory=dict)
    jobs: dict[uuid.UUID, Job] = field(default_factory=dict)  # by buffer id
    messages: list[Message] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    history_rows: list[HistoryRow] = field(default_factory=list)
    memory: dict[ConversationKey, Memory] = field(default_factory=dict)
    #: The ``message_buffer`` columns of an assessed burst, by buffer id.
    assessments: dict[uuid.UUID, Assessment] = field(default_factory=dict)
    _listeners: list[WakeCallback] = field(default_factory=list, init=False, repr=False)

    # -- intake ---------------------------------------------------------------------------

    async def record_incoming(
        self, message: InboundMessage, policy: buffer.BufferPolicy, now: datetime
    ) -> IntakeResult:
        conversation = self._conversation(message.key)
        until = conversation.human_active_until
        if until is not None and now < until:
            return IntakeResult(False, None, False, 0, None, False, human_active_until=until)
        if self._message(message.key, message.chatwoot_message_id) is not None:
            return IntakeResult(False, None, False, 0, None, False)
        current = next(
            (b for b in self._of(message.key) if b.status == "active"),
            None,
        )
        placement = buffer.place(current.window if current else None, policy, now)
        if current is not None and not placement.opens_new:
            current.window, current.due = placement.window, placement.due
            current.status = "closed" if placement.closes_now else "active"
            current.updated_at = now
            job = self.jobs[current.id]
            if job.status == "scheduled":
                job.scheduled_for = placement.due
            target = current
        else:
            if current is not None:
                current.status, current.updated_at = "closed", now
            target = self._open(message.key, placement, now, conversation.message_count)
        self.messages.append(Message(target.id, replace(message, received_at=now)))
        conversation.active_buffer_id = None if placement.closes_now else target.id
        conversation.state = "idle" if placement.closes_now else "buffering"
        conversation.message_count += 1
        self._notify(placement.due)
        return IntakeResult(
            stored=True,
            buffer_id=target.id,
            opened_buffer=placement.opens_new,
            message_count=placement.window.message_count,
            due_at=placement.due,
            closed=placement.closes_now,
        )

    def _open(
        self, key: ConversationKey, placement: buffer.Placement, now: datetime, seq: int
    ) -> Buffer:
        status = "closed" if placement.closes_now else "active"
        opened = Buffer(uuid.uuid4(), key, placement.window, placement.due, status, seq, now)
        self.buffers[opened.id] = opened
        self.jobs[opened.id] = Job(uuid.uuid4(), opened.id, key, placement.due)
        return opened

    async def update_attachments(
        self, key: ConversationKey, chatwoot_message_id: int, attachments: Sequence[Attachment]
    ) -> bool:
        found = self._message(key, chatwoot_message_id)
        if found is None:
            return False
        found.message = replace(found.message, attachments=tuple(attachments))
        return True

    async def cancel_open(
        self,
        key: ConversationKey,
        now: datetime,
        reason: str,
        pause_until: datetime | None = None,
    ) -> int:
        conversation = self._conversation(key)
        if pause_until is not None:
            conversation.human_active_until = pause_until
        cancelled = [b for b in self._of(key) if b.status in _CLAIMABLE]
        for target in cancelled:
            target.status, target.outcome, target.updated_at = "cancelled", reason, now
            job = self.jobs[target.id]
            if job.status in ("scheduled", "running"):
                job.status, job.error_message = "cancelled", reason
                job.lease_owner = job.lease_expires_at = None
        if cancelled:
            conversation.state, conversation.active_buffer_id = "idle", None
        return len(cancelled)

    async def record_agent_message(
        self,
        key: ConversationKey,
        message: HistoryEntry,
        now: datetime,
        reason: str,
        pause_until: datetime | None = None,
    ) -> int:
        self._keep(key, message, "webhook")
        return await self.cancel_open(key, now, reason, pause_until)

    def _keep(self, key: ConversationKey, entry: HistoryEntry, source: str) -> None:
        if entry.chatwoot_message_id is None:
            raise ValueError("a history row needs the Chatwoot message id")
        if not any(
            r.key == key and r.entry.chatwoot_message_id == entry.chatwoot_message_id
            for r in self.history_rows
        ):
            self.history_rows.append(HistoryRow(key, entry, source))

    async def keep_contact_message(
        self,
        key: ConversationKey,
        message: HistoryEntry,
        now: datetime,  # noqa: ARG002
    ) -> None:
        self._keep(key, message, "webhook")

    async def resume_bot(self, key: ConversationKey, now: datetime) -> bool:  # noqa: ARG002
        conversation = self.conversations.get(key)
        if conversation is None or conversation.human_active_until is None:
            return False
        conversation.human_active_until = None
        return True

    async def close_now(
        self, key: ConversationKey, buffer_id: uuid.UUID, now: datetime, reason: str
    ) -> bool:
        target = self.buffers.get(buffer_id)
        if target is None or target.key != key or target.status != "active":
            return False
        target.status, target.outcome, target.updated_at = "closed", reason, now
        target.due = now
        job = self.jobs[buffer_id]
        if job.status == "scheduled":
            job.scheduled_for = now
        conversation = self._conversation(key)
        conversation.state, conversation.active_buffer_id = "idle", None
        self._notify(now)
        return True

    # -- job queue --------------------------------------------------------------------------

    async def claim_due(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if self._is_due(j, now)
                and self.buffers[j.buffer_id].status in _CLAIMABLE
                and not self._waits_for_earlier(self.buffers[j.buffer_id])
            ),
            key=lambda j: j.scheduled_for,
        )[:limit]
        claimed = []
        for job in due:
            job.status, job.lease_owner, job.lease_expires_at = "running", owner, now + lease
            job.attempts += 1
            held = self.buffers[job.buffer_id]
            held.status, held.updated_at = "processing", now
            self.conversations[job.key].state = "processing"
            claimed.append(
                ClaimedJob(
                    job_id=job.id,
                    buffer_id=job.buffer_id,
                    key=job.key,
                    attempts=job.attempts,
                    scheduled_for=job.scheduled_for,
                    claimed_at=now,
                    last_error=job.error_message,
                )
            )
        return claimed

    @staticmethod
    def _is_due(job: Job, now: datetime) -> bool:
        if job.status == "scheduled":
            return job.scheduled_for <= now
        expires = job.lease_expires_at
        return job.status == "running" and expires is not None and expires < now

    def _waits_for_earlier(self, waiting: Buffer) -> bool:
        """Answered in conversation order (as ``statements._WAITS_FOR_EARLIER``)."""
        return any(
            b.status in ("closed", "processing") and b.seq < waiting.seq
            for b in self._of(waiting.key)
        )

    async def next_wake_at(self, now: datetime) -> datetime | None:  # noqa: ARG002
        instants = [
            j.scheduled_for
            for j in self.jobs.values()
            if j.status == "scheduled" and not self._waits_for_earlier(self.buffers[j.buffer_id])
        ] + [
            j.lease_expires_at
            for j in self.jobs.values()
            if j.status == "running" and j.lease_expires_at is not None
        ]
        return min(instants, default=None)

    async def heartbeat(
        self, owner: str, jobs: Sequence[ClaimedJob], lease: timedelta, now: datetime
    ) -> set[uuid.UUID]:
        kept = set()
        for job in jobs:
            held = self._held(job, owner)
            if held is not None:
                self._keep_lease(held, now + lease)
                kept.add(job.job_id)
        return kept

    @staticmethod
    def _keep_lease(held: Job, until: datetime) -> None:
        """A renewal never shortens a lease (a reserved send may hold it longer)."""
        if held.lease_expires_at is None or held.lease_expires_at < until:
            held.lease_expires_at = until

    async def listen(self, wake: WakeCallback) -> None:
        """Hears what PostgreSQL's NOTIFY would carry (new due times, retries, replays)."""
        self._listeners.append(wake)
        try:
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(wake)

    def _notify(self, due: datetime) -> None:
        for wake in list(self._listeners):
            wake(due)

    # -- conversation history ---------------------------------------------------------------

    async def load(
        self, job: ClaimedJob, owner: str, history_limit: int, *, backfill: bool = False
    ) -> BufferContents:
        burst = sorted(
            (m.message for m in self.messages if m.buffer_id == job.buffer_id),
            key=lambda m: m.chatwoot_message_id,
        )
        memory = self.memory.get(job.key)
        summary = memory.summary if memory is not None else None
        history = self.turns(job.key, job.buffer_id, burst, summary, history_limit)
        backfill_before = None
        if backfill and (memory is None or memory.backfilled_at is None):
            backfill_before = min(
                [m.message.chatwoot_message_id for m in self.messages if m.message.key == job.key]
                + [
                    r.entry.chatwoot_message_id
                    for r in self.history_rows
                    if r.key == job.key and r.entry.chatwoot_message_id is not None
                ]
                + [
                    r.chatwoot_message_id
                    for r in self.replies
                    if r.key == job.key and r.chatwoot_message_id is not None
                ],
                default=None,
            )
        posted = [
            PostedMessage(r.kind, r.content, r.chatwoot_message_id, r.part)
            for r in sorted(self._posted(job.buffer_id), key=lambda r: (r.sent_at, r.part))
        ]
        check = await self.before_send(job, owner)
        return BufferContents(
            messages=burst,
            history=history,
            posted=posted,
            check=check,
            summary=summary,
            backfill_before=backfill_before,
        )

    def turns(
        self,
        key: ConversationKey,
        buffer_id: uuid.UUID,
        burst: Sequence[InboundMessage],
        summary: ConversationSummary | None,
        limit: int,
    ) -> list[HistoryEntry]:
        """The history rule of ``SqlBufferStore.load``: the turns before the burst and after
        the summary, the newest ``limit`` of each kind, interleaved, the newest ``limit``."""
        if limit <= 0 or not burst:
            return []
        before = burst[0].received_at
        after = summary.through if summary is not None else None

        def within(at: datetime) -> bool:
            return at < before and (after is None or at > after)

        earlier = sorted(
            (
                m.message
                for m in self.messages
                if m.message.key == key
                and m.buffer_id != buffer_id
                and within(m.message.received_at)
            ),
            key=lambda m: m.received_at,
            reverse=True,
        )[:limit]
        replies = sorted(
            (
                r
                for r in self.replies
                if r.key == key
                and r.kind == "reply"
                and r.chatwoot_message_id is not None
                and within(r.sent_at)
            ),
            key=lambda r: r.sent_at,
            reverse=True,
        )[:limit]
        kept = sorted(
            (r.entry for r in self.history_rows if r.key == key and within(r.entry.at)),
            key=lambda e: e.at,
            reverse=True,
        )[:limit]
        history = (
            [HistoryEntry("contact", m.content, m.received_at, m.attachments) for m in earlier]
            + [HistoryEntry("assistant", r.content, r.sent_at) for r in replies]
            + kept
        )
        history.sort(key=lambda e: e.at)
        return history[-limit:]

    # -- conversation memory ----------------------------------------------------------------

    async def record_backfill(
        self, key: ConversationKey, entries: Sequence[HistoryEntry], now: datetime
    ) -> None:
        for entry in entries:
            self._keep(key, entry, "chatwoot")
        memory = self.memory.setdefault(key, Memory())
        if memory.backfilled_at is None:
            memory.backfilled_at = now

    async def save_summary(
        self,
        key: ConversationKey,
        summary: ConversationSummary,
        now: datetime,  # noqa: ARG002
    ) -> bool:
        memory = self.memory.setdefault(key, Memory())
        if memory.summary is not None and memory.summary.through >= summary.through:
            return False
        memory.summary = summary
        return True

    # -- send ledger ------------------------------------------------------------------------

    async def before_send(self, job: ClaimedJob, owner: str) -> SendCheck:
        if self._held(job, owner) is None or self.buffers[job.buffer_id].status != "processing":
            return "cancelled"
        return "newer" if self._newer(self.buffers[job.buffer_id]) else "send"

    async def reserve_send(
        self,
        job: ClaimedJob,
        owner: str,
        intent: PostedMessage | Sequence[PostedMessage],
        now: datetime,
        *,
        hold: timedelta = DEFAULT_SEND_HOLD,
    ) -> SendCheck:
        held = self._held(job, owner)
        if held is None:
            return "cancelled"
        self._keep_lease(held, now + hold)
        verdict = await self.before_send(job, owner)
        if verdict != "cancelled":
            for part in [intent] if isinstance(intent, PostedMessage) else intent:
                self._record_posted(job, part, now)
        return verdict

    async def confirm_sent(
        self, key: ConversationKey, marker: Marker, chatwoot_message_id: int
    ) -> bool:
        for reply in self._posted(marker.buffer_id):
            if (
                reply.key == key
                and reply.kind == marker.kind
                and reply.part == marker.part
                and reply.chatwoot_message_id is None
            ):
                reply.chatwoot_message_id = chatwoot_message_id
                return True
        return False

    def _record_posted(self, job: ClaimedJob, posted: PostedMessage, now: datetime) -> None:
        """Record an intent, or fill in the id of one; a row that already has an id is kept."""
        for reply in self._posted(job.buffer_id):
            if reply.kind == posted.kind and reply.part == posted.part:
                if reply.chatwoot_message_id is None:
                    reply.chatwoot_message_id = posted.chatwoot_message_id
                return
        self.replies.append(
            Reply(
                job.buffer_id,
                job.key,
                posted.kind,
                posted.content,
                posted.chatwoot_message_id,
                now,
                posted.part,
            )
        )

    async def supersede(
        self, job: ClaimedJob, owner: str, now: datetime, policy: buffer.BufferPolicy
    ) -> uuid.UUID | None:
        stale = self.buffers[job.buffer_id]
        if not buffer.may_fold(stale.window, stale.due, policy, now):
            return None
        newer = self._newer(stale)
        if newer is None:
            return None
        if newer.window.message_count + stale.window.message_count > policy.max_size:
            return None
        if not self._finish(job, owner, "completed", "superseded", now, _SUPERSEDED):
            return None
        for moved in self.messages:
            if moved.buffer_id == job.buffer_id:
                moved.buffer_id = newer.id
        newer.window = buffer.merged(stale.window, newer.window)
        newer.due = buffer.due_at(newer.window, policy)
        if newer.due <= now:
            # Already past the oldest message's cap (or full): it takes no more messages.
            newer.status = "closed"
        newer.updated_at = now
        grown = self.jobs[newer.id]
        if grown.status == "scheduled":
            grown.scheduled_for = newer.due
        self._wake_waiting(job)
        return newer.id

    async def complete(
        self,
        job: ClaimedJob,
        owner: str,
        now: datetime,
        note: str,
        posted: PostedMessage | None = None,
        *,
        assessment: Assessment | None = None,
    ) -> bool:
        if posted is not None:
            self._record_posted(job, posted, now)
        if assessment is not None and job.buffer_id in self.buffers:
            self.assessments[job.buffer_id] = assessment
        if not self._finish(job, owner, "completed", "completed", now, note):
            return False
        for message in self.messages:
            if message.buffer_id == job.buffer_id:
                message.processed = True
        self._idle_if_processing(job.key)
        self._wake_waiting(job)
        return True

    async def release_for_retry(
        self, job: ClaimedJob, owner: str, error: str, retry_at: datetime
    ) -> bool:
        held = self._held(job, owner)
        if held is None:
            return False
        held.status, held.scheduled_for, held.error_message = "scheduled", retry_at, error
        held.lease_owner = held.lease_expires_at = None
        released = self.buffers[job.buffer_id]
        if released.status == "processing":
            released.status, released.updated_at = "closed", job.claimed_at
        self._notify(retry_at)
        return True

    async def fail(self, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool:
        if not self._finish(job, owner, "failed", "failed", now, error, error=error):
            return False
        self._idle_if_processing(job.key)
        self._wake_waiting(job)
        return True

    def _finish(
        self,
        job: ClaimedJob,
        owner: str,
        job_status: str,
        buffer_status: str,
        now: datetime,
        note: str,
        *,
        error: str | None = None,
    ) -> bool:
        """End a held job and its ``processing`` buffer; False when the lease is lost."""
        held = self._held(job, owner)
        if held is None:
            return False
        held.status, held.lease_owner, held.lease_expires_at = job_status, None, None
        if error is not None:
            held.error_message = error
        finished = self.buffers[job.buffer_id]
        if finished.status == "processing":
            finished.status, finished.outcome, finished.updated_at = buffer_status, note, now
        return True

    def _wake_waiting(self, finished: ClaimedJob) -> None:
        """A buffer of the conversation held back behind the one that just ended may be
        claimed now: tell the listeners its due time (as ``statements.WAKE_WAITING``)."""
        waiting = [
            j.scheduled_for
            for j in self.jobs.values()
            if j.key == finished.key
            and j.status == "scheduled"
            and j.buffer_id != finished.buffer_id
        ]
        if waiting:
            self._notify(min(waiting))

    def _idle_if_processing(self, key: ConversationKey) -> None:
        conversation = self.conversations[key]
        if conversation.state == "processing":
            conversation.state = "idle"

    # -- admin --------------------------------------------------------------------------------

    async def list_buffers(
        self, status: str, limit: int, key: ConversationKey | None = None
    ) -> list[BufferSummary]:
        found = [
            b for b in self.buffers.values() if b.status == status and (key is None or b.key == key)
        ]
        found.sort(key=lambda b: b.updated_at, reverse=True)
        return [self._summary(b) for b in found[:limit]]

    async def replay(
        self, buffer_id: uuid.UUID, now: datetime
    ) -> tuple[ReplayResult, BufferSummary | None]:
        found = self.buffers.get(buffer_id)
        if found is None:
            return "not_found", None
        job = self.jobs[buffer_id]
        if job.status != "failed":
            return "not_failed", self._summary(found)
        if any(b.status in _ANSWERED and b.seq > found.seq for b in self._of(found.key)):
            # A newer burst of the conversation is answered or being answered: answering this
            # one now would reply out of order.
            return "out_of_order", self._summary(found)
        job.status, job.attempts, job.scheduled_for = "scheduled", 0, now
        job.lease_owner = job.lease_expires_at = None
        if found.status == "failed":
            found.status, found.outcome, found.updated_at = "closed", None, now
        self.replies = [
            r
            for r in self.replies
            if not (
                r.buffer_id == buffer_id
                and r.kind == "failure_note"
                and r.chatwoot_message_id is None
            )
        ]
        self._notify(now)
        return "scheduled", self._summary(found)

    def _summary(self, found: Buffer) -> BufferSummary:
        job = self.jobs[found.id]
        return BufferSummary(
            buffer_id=found.id,
            key=found.key,
            status=found.status,
            message_count=found.window.message_count,
            attempts=job.attempts,
            error=job.error_message,
            outcome=found.outcome,
            updated_at=found.updated_at,
            due_at=job.scheduled_for,
        )

    # -- lookups ----------------------------------------------------------------------------

    def _conversation(self, key: ConversationKey) -> Conversation:
        return self.conversations.setdefault(key, Conversation(key))

    def _of(self, key: ConversationKey) -> list[Buffer]:
        return [b for b in self.buffers.values() if b.key == key]

    def _message(self, key: ConversationKey, chatwoot_message_id: int) -> Message | None:
        return next(
            (
                m
                for m in self.messages
                if m.message.key == key and m.message.chatwoot_message_id == chatwoot_message_id
            ),
            None,
        )

    def _held(self, job: ClaimedJob, owner: str) -> Job | None:
        found = self.jobs.get(job.buffer_id)
        if (
            found is None
            or found.id != job.job_id
            or found.status != "running"
            or found.lease_owner != owner
        ):
            return None
        return found

    def _newer(self, than: Buffer) -> Buffer | None:
        """The conversation's oldest buffer opened after ``than`` and not yet taken."""
        newer = [
            b for b in self._of(than.key) if b.status in ("active", "closed") and b.seq > than.seq
        ]
        return min(newer, key=lambda b: b.seq, default=None)

    def _posted(self, buffer_id: uuid.UUID) -> list[Reply]:
        return [r for r in self.replies if r.buffer_id == buffer_id]


_SUPERSEDED = "superseded: the contact wrote again while the reply was being written"
