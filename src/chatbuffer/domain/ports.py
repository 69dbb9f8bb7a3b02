"""The roles the core needs from the outside world, as Protocols, one role each.

The store's roles: ``IntakeStore`` (webhooks), ``JobQueue`` and ``WakeSignals`` (the scheduler),
``ConversationHistory``, ``ConversationMemory`` and ``SendLedger`` (the pipeline), ``BotStates``
(a conversation's hand-off, pause or off, for the pipeline, the webhooks and operators),
``ControlSource`` / ``ControlWriter`` / ``LiveControls`` and ``BufferAdmin`` (operators).
``storage`` implements them over SQL, ``chatbuffer.testing`` in memory with the same semantics;
``chatwoot.client.ChatwootClient``,
``chatwoot.history.ChatwootHistory`` (``HistorySource``) and ``ai.openai_model`` (``ReplyModel``,
``Summarizer``) implement the rest. ``app.py`` wires them; the worker and intake see only these.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from chatbuffer.domain.aggregation import Prompt, PromptInputs, ReadKind
from chatbuffer.domain.bot_state import BotState
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.control import Controls, Subject
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.marker import Marker, ReplyKind
from chatbuffer.domain.model import (
    Assessment,
    Attachment,
    AttachmentContent,
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
    ModelDecision,
)
from chatbuffer.domain.smart_window import WindowState


class Clock(Protocol):
    """Reads and waits on time; the system clock in production, a fake one in tests."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class ChatwootAPI(Protocol):
    """The Chatwoot calls a bot makes, all keyed by one conversation."""

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None: ...

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        """Post a message and return Chatwoot's message id."""
        ...

    async def set_status(self, key: ConversationKey, status: str) -> None: ...

    async def find_marked(
        self, key: ConversationKey, marker: Marker, *, after_message_id: int | None
    ) -> int | None:
        """The id of a message carrying ``marker`` posted after ``after_message_id``, if the
        conversation shows one; used before posting again after a crash or a timeout."""
        ...


class Transcriber(Protocol):
    """Turns a voice note into text."""

    async def transcribe(self, attachment: Attachment) -> str: ...


class HistorySource(Protocol):
    """A conversation's messages from before chatbuffer stored any (``CHATWOOT_USER_TOKEN``)."""

    async def earlier(
        self, key: ConversationKey, before_message_id: int, limit: int
    ) -> Sequence[HistoryEntry]:
        """At most ``limit`` public messages posted before ``before_message_id``, oldest first,
        each with its Chatwoot id (private notes and activity messages are left out)."""
        ...


class Summarizer(Protocol):
    """Writes the rolling summary of a conversation (``domain.history.summary_prompt``)."""

    async def summarize(self, prompt: Prompt) -> str: ...


class ReplyModel(Protocol):
    """Writes the decision for one burst."""

    async def decide(self, prompt: Prompt) -> ModelDecision:
        """The model's answer; ``InvalidModelAnswer`` when it is not the JSON asked for, and
        ``ImagesRefused`` when the endpoint does not take the prompt's images."""
        ...


class BurstConsumer(Protocol):
    """Answers a closed burst instead of the model: the operator's own agent, over a webhook."""

    async def decide(
        self, key: ConversationKey, buffer_id: uuid.UUID, inputs: PromptInputs
    ) -> ModelDecision:
        """The consumer's answer, with the model's fields; ``ModelError`` (retried) when it
        fails, times out or answers something that is not that."""
        ...


class AttachmentReader(Protocol):
    """Reads a burst's images and files for the model, from Chatwoot only."""

    async def read(self, attachment: Attachment, kind: ReadKind) -> AttachmentContent:
        """An image's bytes (``kind="image"``) or a file's text (``"text"``). When the
        attachment itself is the problem (too large, not on the Chatwoot host, unreadable) the
        answer says so in ``problem``; a passing failure raises a retryable
        ``AttachmentError``."""
        ...


EventName = Literal[
    "message_duplicate",
    "buffer_opened",
    "buffer_extended",
    "buffer_closed",
    "buffer_cancelled",
    "buffer_superseded",
    "reply_sent",
    "handoff",
    "no_reply",
    "attempt_failed",
    "buffer_failed",
    "send_reconciled",
    "history_fetched",
    "summary_refreshed",
]


class Observer(Protocol):
    """Hears what happens to buffers (logs, metrics, the demo's timeline)."""

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What storing one incoming message did."""

    stored: bool
    buffer_id: uuid.UUID | None
    opened_buffer: bool
    message_count: int
    due_at: datetime | None
    closed: bool
    #: Set when the message was not buffered because a human is handling the conversation.
    human_active_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A due buffer this worker now holds under a lease."""

    job_id: uuid.UUID
    buffer_id: uuid.UUID
    key: ConversationKey
    attempts: int
    scheduled_for: datetime
    claimed_at: datetime
    #: The error the previous attempt recorded, if any.
    last_error: str | None = None


SendCheck = Literal["send", "cancelled", "newer"]


@dataclass(frozen=True, slots=True)
class BufferContents:
    """Everything needed to answer one buffer."""

    messages: Sequence[InboundMessage]
    history: Sequence[HistoryEntry]
    #: What an earlier attempt meant to post or posted for this buffer (empty on a first try).
    posted: Sequence[PostedMessage] = ()
    #: Whether the buffer may still be answered, read with the rest (``SendLedger.before_send``).
    check: SendCheck = "send"
    #: The conversation's rolling summary; ``history`` holds only the turns after it.
    summary: ConversationSummary | None = None
    #: Asked for with ``backfill=True`` and the conversation's earlier history was never fetched
    #: from Chatwoot: the oldest Chatwoot message id chatbuffer stored of it (fetch before it).
    backfill_before: int | None = None


@dataclass(frozen=True, slots=True)
class PostedMessage:
    """A message the bot means to post, or has posted, for a buffer.

    Recorded before the POST with no ``chatwoot_message_id`` (the intent), and given the id once
    Chatwoot's answer or its webhook echo confirms it: an intent without an id after a crash is
    the case the retry must check Chatwoot for before posting again.
    """

    kind: ReplyKind
    content: str
    chatwoot_message_id: int | None = None
    #: A reply longer than one message is posted as parts 0, 1, …, each recorded, marked and
    #: confirmed on its own (``domain.whatsapp.split``).
    part: int = 0


def whole_message(parts: Sequence[PostedMessage]) -> PostedMessage:
    """The parts of one message read as one (for operators): the texts in order, a blank line
    between them, with the first part's Chatwoot id, and none until every part has one."""
    ordered = sorted(parts, key=lambda p: p.part)
    first = ordered[0]
    confirmed = all(p.chatwoot_message_id is not None for p in ordered)
    return PostedMessage(
        first.kind,
        "\n\n".join(p.content for p in ordered),
        first.chatwoot_message_id if confirmed else None,
    )


class AttachmentUpdates(Protocol):
    """Takes a later version of a stored message's attachments (a voice note's transcript)."""

    async def update_attachments(
        self, key: ConversationKey, chatwoot_message_id: int, attachments: Sequence[Attachment]
    ) -> bool: ...


class IntakeStore(AttachmentUpdates, Protocol):
    """What a webhook does to the buffers: store a message, cancel, pause or resume the bot."""

    async def record_incoming(
        self, message: InboundMessage, policy: BufferPolicy, now: datetime
    ) -> IntakeResult: ...

    async def cancel_open(
        self,
        key: ConversationKey,
        now: datetime,
        reason: str,
        pause_until: datetime | None = None,
    ) -> int:
        """Cancel the conversation's unanswered buffers; with ``pause_until``, keep the bot
        out of the conversation until then (a person is answering instead)."""
        ...

    async def keep_contact_message(
        self, key: ConversationKey, message: HistoryEntry, now: datetime
    ) -> None:
        """Keep a contact's message the bot does not answer (paused, handed off) for the
        conversation's history, once per Chatwoot message id; no buffer is touched."""
        ...

    async def resume_bot(self, key: ConversationKey, now: datetime) -> bool: ...

    async def close_now(
        self, key: ConversationKey, buffer_id: uuid.UUID, now: datetime, reason: str
    ) -> bool:
        """Close a collecting buffer and make it due now (a control word: no waiting for the
        rest of the burst); whether it was still collecting."""
        ...

    async def record_agent_message(
        self,
        key: ConversationKey,
        message: HistoryEntry,
        now: datetime,
        reason: str,
        pause_until: datetime | None = None,
    ) -> int:
        """A human agent's public message: keep it for the conversation's history (once per
        Chatwoot message id) and, in the same transaction, ``cancel_open``."""
        ...


class BotStates(Protocol):
    """Whether the bot may act in a conversation (``domain.bot_state``), and the changes to it:
    a hand-off, an operator's off, a resume. One row per conversation, apart from the buffers."""

    async def state(self, key: ConversationKey, now: datetime) -> BotState: ...

    async def hand_off(self, key: ConversationKey, reason: str, now: datetime) -> None:
        """The bot gave the conversation to a person (unless an operator turned it off)."""
        ...

    async def turn_off(self, key: ConversationKey, reason: str, now: datetime) -> None: ...

    async def resume(self, key: ConversationKey, now: datetime, *, by_operator: bool) -> bool:
        """Make the bot active again: end a hand-off and a human's pause; ``off`` ends only
        ``by_operator``. Whether anything changed."""
        ...


class JobQueue(Protocol):
    """Due buffers for the workers: claim under a lease, keep it, know when to look again."""

    async def claim_due(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedJob]: ...

    async def heartbeat(
        self, owner: str, jobs: Sequence[ClaimedJob], lease: timedelta, now: datetime
    ) -> set[uuid.UUID]:
        """Renew ``owner``'s leases on ``jobs``; the ids of those it still holds."""
        ...

    async def next_wake_at(self, now: datetime) -> datetime | None:
        """When the next job is due or a lease runs out, on the clock that read ``now``."""
        ...


WakeCallback = Callable[[datetime | None], None]


class WakeSignals(Protocol):
    """Wake-ups from other processes: something became due at the given instant (None: look)."""

    async def listen(self, wake: WakeCallback) -> None:
        """Call ``wake`` for each signal until cancelled."""
        ...


class SendConfirmations(Protocol):
    """Learns the Chatwoot id of a message the bot posted."""

    async def confirm_sent(
        self, key: ConversationKey, marker: Marker, chatwoot_message_id: int
    ) -> bool:
        """Record the Chatwoot id of a posted message (from the POST's answer, the webhook echo
        or a reconciliation)."""
        ...


class SendLedger(SendConfirmations, Protocol):
    """How a held buffer ends: the checks and the send intent before a POST, then one outcome."""

    async def before_send(self, job: ClaimedJob, owner: str) -> SendCheck:
        """Whether the buffer may still be answered: ``send``, ``cancelled`` (lost, or a
        human took over) or ``newer`` (the contact wrote again since it closed). The same check
        comes with ``ConversationHistory.load``; this one is for later, when nothing is sent."""
        ...

    async def reserve_send(
        self,
        job: ClaimedJob,
        owner: str,
        intent: PostedMessage | Sequence[PostedMessage],
        now: datetime,
        *,
        hold: timedelta = ...,
    ) -> SendCheck:
        """``before_send``, and unless the job is lost record ``intent`` (every part of a long
        reply; a part already recorded is kept as it is) and keep the lease for at least
        ``hold`` in the same transaction, so a crash after the POST leaves a trace to check and
        no other worker takes the buffer over while the POST may still land."""
        ...

    async def supersede(
        self, job: ClaimedJob, owner: str, now: datetime, policy: BufferPolicy
    ) -> uuid.UUID | None:
        """Fold a stale buffer closed by quiet into the newer one; None: answer it as it is."""
        ...

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
        """Mark the buffer answered (``note``), recording ``posted`` (which Chatwoot accepted,
        even when the lease is lost meanwhile) and keeping ``assessment`` with the buffer, what
        the model said of the burst and its urgency, for operators (``chatbuffer prompt try``,
        the ``message_buffer`` row)."""
        ...

    async def release_for_retry(
        self, job: ClaimedJob, owner: str, error: str, retry_at: datetime
    ) -> bool: ...

    async def fail(self, job: ClaimedJob, owner: str, error: str, now: datetime) -> bool: ...


class ConversationHistory(AttachmentUpdates, Protocol):
    """A held buffer's messages, the conversation before them, and what was posted for it."""

    async def load(
        self, job: ClaimedJob, owner: str, history_limit: int, *, backfill: bool = False
    ) -> BufferContents:
        """One consistent read: the burst in Chatwoot message-id order, the conversation's
        rolling summary and at most ``history_limit`` earlier turns after it (oldest first: the
        contact's messages, the bot's confirmed replies, human agents' messages and history
        fetched from Chatwoot), earlier attempts' send intents, and whether ``owner`` may still
        answer it (``SendLedger.before_send``): right after the claim that check costs no
        transaction of its own. With ``backfill``, also where to fetch the history Chatwoot had
        before chatbuffer (``BufferContents.backfill_before``)."""
        ...


class ConversationMemory(Protocol):
    """What the pipeline keeps about a conversation beyond its buffers: the history fetched from
    Chatwoot and the rolling summary. Neither is ever needed for a reply to be correct, so
    neither write is part of a buffer's transactions."""

    async def record_backfill(
        self, key: ConversationKey, entries: Sequence[HistoryEntry], now: datetime
    ) -> None:
        """Keep ``entries`` (each with its Chatwoot id; one already kept is skipped) and note that
        the conversation's earlier history was fetched, so it is never fetched again."""
        ...

    async def save_summary(
        self, key: ConversationKey, summary: ConversationSummary, now: datetime
    ) -> bool:
        """Store the summary unless the stored one already reaches as far (two workers that
        refreshed it at once: the one that covers more wins)."""
        ...


@dataclass(frozen=True, slots=True)
class StoredControls:
    """The live controls as stored: the seed's flag rows and the named control values (names
    this version does not know are kept; ``domain.control.parse`` ignores them)."""

    flags: Mapping[str, bool]
    values: Mapping[str, str]


class ControlSource(Protocol):
    """Reads the operators' live controls."""

    async def read_controls(self) -> StoredControls: ...


class ControlWriter(Protocol):
    """Changes the operators' live controls (the CLI and the admin API; never the hot path)."""

    async def set_flag(self, flag: Flag, on: bool) -> None: ...

    async def set_values(self, values: Mapping[str, str | None]) -> None:
        """Set named control values, removing those given as None, in one transaction."""
        ...


class ConversationSubjects(Protocol):
    """What the live controls need to know of a conversation the worker acts in: its inbox
    and contact, as its latest stored message gave them (canaries and per-inbox flags)."""

    async def subject(self, key: ConversationKey) -> Subject: ...


class FeatureFlags(Protocol):
    """Whether a flag is on for one conversation (in its inbox, when known)."""

    async def is_enabled(
        self, flag: Flag, key: ConversationKey, *, inbox_id: int | None = None
    ) -> bool: ...


class LiveControls(FeatureFlags, Protocol):
    """The controls as this process currently knows them (at most a few seconds old)."""

    async def current(self) -> Controls: ...


class WindowStates(Protocol):
    """The smart windows' memory of each conversation (``domain.smart_window``)."""

    async def update(
        self, key: ConversationKey, change: Callable[[WindowState], WindowState]
    ) -> WindowState:
        """Apply ``change`` to the conversation's state (a fresh one if none is kept) and keep
        the result; concurrent updates of one conversation apply one after the other."""
        ...


@dataclass(frozen=True, slots=True)
class BufferSummary:
    """One buffer as an operator sees it."""

    buffer_id: uuid.UUID
    key: ConversationKey
    status: str
    message_count: int
    attempts: int
    error: str | None
    outcome: str | None
    updated_at: datetime
    #: When its job is (or was) due: for a buffer still collecting, when it closes unless
    #: another message comes.
    due_at: datetime | None = None


ReplayResult = Literal["scheduled", "not_found", "not_failed", "out_of_order"]


class BufferAdmin(Protocol):
    """What the admin API may see and do; every call is an operator's, never the hot path."""

    async def list_buffers(
        self, status: str, limit: int, key: ConversationKey | None = None
    ) -> list[BufferSummary]: ...

    async def replay(
        self, buffer_id: uuid.UUID, now: datetime
    ) -> tuple[ReplayResult, BufferSummary | None]:
        """Schedule a failed buffer to be answered again now, with fresh attempts."""
        ...


@dataclass(frozen=True, slots=True)
class StoredBurst:
    """A stored buffer read back as the model would be asked about it."""

    buffer_id: uuid.UUID
    key: ConversationKey
    status: str
    #: The burst in Chatwoot message-id order.
    messages: Sequence[InboundMessage]
    #: The conversation before it, oldest first, as ``ConversationHistory.load`` gives it.
    history: Sequence[HistoryEntry]
    #: The reply (or hand-off note) the bot posted or meant to post for it, if any.
    answer: PostedMessage | None
    last_message_at: datetime
    #: The conversation's rolling summary as stored now; ``history`` is what came after it.
    summary: ConversationSummary | None = None
    #: What the model said about the burst and its urgency, once it was asked.
    assessment: Assessment | None = None


class BurstArchive(Protocol):
    """Stored bursts for operators (``chatbuffer prompt show`` and ``try``); never the hot path."""

    async def burst(self, buffer_id: uuid.UUID, history_limit: int) -> StoredBurst | None: ...

    async def recent(self, limit: int, history_limit: int) -> list[StoredBurst]:
        """The ``limit`` bursts whose last message is newest, newest first; buffers without
        messages (folded into a newer one) are skipped."""
        ...


@dataclass(frozen=True, slots=True)
class ModelExchange:
    """One request the worker made to the model for a buffer, and how it ended."""

    key: ConversationKey
    buffer_id: uuid.UUID
    attempt: int
    requested_at: datetime
    duration_ms: int
    #: The request body as sent (images' data: URLs shortened), when the model is an endpoint.
    request: Mapping[str, Any] | None
    #: The model's text exactly as it answered, when it answered.
    answer: str | None
    #: The parsed decision's fields, when the answer was one.
    decision: Mapping[str, Any] | None
    error: str | None = None


class TraceLog(Protocol):
    """Keeps each buffer's model requests for ``chatbuffer buffers trace``; never needed for a
    reply to be correct, so a failed write costs only the trace."""

    async def record_exchange(self, exchange: ModelExchange) -> None: ...
