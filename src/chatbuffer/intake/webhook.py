"""Decide what a Chatwoot event means for the buffers, then do it.

``classify`` is pure: it maps a parsed event to one action. ``WebhookIntake`` carries the action out
against the store. Every answer is a small JSON body the web layer returns with status 200.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from chatbuffer.domain import contact, control_words
from chatbuffer.domain import marker as markers
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.model import (
    Attachment,
    ConversationKey,
    HistoryEntry,
    InboundMessage,
    MessageKind,
)
from chatbuffer.domain.ports import BotStates, Clock, IntakeStore, Observer, SendConfirmations
from chatbuffer.errors import MalformedPayload
from chatbuffer.intake.payloads import ConversationEvent, MessageEvent

REPLY_MARKER = markers.REPLY_MARKER

MESSAGE_EVENTS = frozenset({"message_created", "message_updated"})
CONVERSATION_EVENTS = frozenset(
    {
        "conversation_status_changed",
        "conversation_updated",
        "conversation_resolved",
        "conversation_opened",
    }
)


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Buffer:
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class UpdateAttachments:
    key: ConversationKey
    chatwoot_message_id: int
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True, slots=True)
class CancelBuffers:
    """Drop the pending answer; ``human`` also keeps the bot out for a while."""

    key: ConversationKey
    reason: str
    human: bool = False


@dataclass(frozen=True, slots=True)
class RecordAgentMessage:
    """A person at the business answered in public: keep what they said for the history, and
    cancel as ``CancelBuffers(human=True)`` does."""

    key: ConversationKey
    message: HistoryEntry
    reason: str


@dataclass(frozen=True, slots=True)
class ConfirmSent:
    """Chatwoot echoed a message the bot posted: its id confirms the send."""

    key: ConversationKey
    marker: markers.Marker
    chatwoot_message_id: int


@dataclass(frozen=True, slots=True)
class ControlWord:
    """The contact asked for a person (``HANDOFF_KEYWORDS``): store the message, then close its
    burst at once, to be handed off unanswered."""

    message: InboundMessage
    word: str


@dataclass(frozen=True, slots=True)
class KeepContactMessage:
    """The contact wrote in a conversation the bot does not answer in (not in
    ``BOT_ACTIVE_STATUSES``: handed off, with a person): keep it for the history only."""

    key: ConversationKey
    message: HistoryEntry
    reason: str


@dataclass(frozen=True, slots=True)
class ResumeBot:
    """The conversation was handed back to the bot: end a human takeover pause."""

    key: ConversationKey
    status: str


Action = (
    Ignore
    | Buffer
    | UpdateAttachments
    | CancelBuffers
    | RecordAgentMessage
    | ResumeBot
    | ConfirmSent
    | ControlWord
    | KeepContactMessage
)


@dataclass(frozen=True, slots=True)
class IntakeRules:
    """Which events chatbuffer acts on."""

    active_statuses: frozenset[str]
    account_id: int | None = None
    #: What of the contact's data is kept with a message (``CONTACT_ATTRIBUTES_TO_MODEL``).
    attributes: AttributeSelection = field(default_factory=AttributeSelection)
    #: Normalized control words (``HANDOFF_KEYWORDS``, ``domain.control_words``).
    handoff_keywords: frozenset[str] = frozenset()


def parse(body: Any) -> MessageEvent | ConversationEvent | str:
    """Parse the JSON body into the event model we read, or return the unhandled event's name."""
    if not isinstance(body, dict):
        raise MalformedPayload("the body must be a JSON object", status_code=422)
    event = body.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedPayload('the body has no "event" field', status_code=422)
    model: type[MessageEvent] | type[ConversationEvent]
    if event in MESSAGE_EVENTS:
        model = MessageEvent
    elif event in CONVERSATION_EVENTS:
        model = ConversationEvent
    else:
        return event
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise MalformedPayload(
            f"{event} payload is invalid at {where}: {first.get('msg', 'invalid')}",
            status_code=422,
        ) from None


def classify(
    parsed: MessageEvent | ConversationEvent | str, rules: IntakeRules, now: datetime
) -> Action:
    """The one action an event calls for; ``now`` becomes a buffered message's arrival time."""
    if isinstance(parsed, str):
        return Ignore(f"event {parsed} is not handled")
    account_id = parsed.account.id if parsed.account else None
    if account_id is None:
        return Ignore("event carries no account id")
    if rules.account_id is not None and account_id != rules.account_id:
        return Ignore("account is not served by this chatbuffer")
    if isinstance(parsed, ConversationEvent):
        key = ConversationKey(account_id, parsed.id)
        if parsed.status and parsed.status not in rules.active_statuses:
            return CancelBuffers(key, f"conversation became {parsed.status}")
        # Only a real status change hands a conversation back; conversation_updated also fires
        # for a human's reply (first_reply_created_at, waiting_since) with the status unchanged,
        # so it counts only when its changed_attributes name the status.
        if parsed.event == "conversation_status_changed" and parsed.status:
            return ResumeBot(key, parsed.status)
        changed = parsed.status_change()
        if parsed.event == "conversation_updated" and changed in rules.active_statuses:
            return ResumeBot(key, changed)
        return Ignore("conversation change needs no action")
    key = ConversationKey(account_id, parsed.conversation.id)
    return _classify_message(parsed, key, rules, now)


def _classify_message(
    event: MessageEvent, key: ConversationKey, rules: IntakeRules, now: datetime
) -> Action:
    attributes = event.content_attributes or {}
    if event.message_type == "outgoing" and markers.is_marked(attributes):
        marker = markers.read(attributes, private=bool(event.private))
        if marker is not None and event.event == "message_created":
            return ConfirmSent(key, marker, event.id)
        return Ignore("the bot's own reply")
    if event.private:
        return Ignore("private note")
    if event.message_type == "outgoing":
        sender_type = event.sender.type if event.sender else None
        if sender_type == "agent_bot":
            return Ignore("the bot's own reply")
        if event.event == "message_created" and (
            sender_type == "user" or attributes.get("external_echo") is True
        ):
            # The phone app's echo has no sender: Chatwoot does not know who typed it.
            author = event.sender.name if event.sender and sender_type == "user" else None
            said = HistoryEntry(
                role="agent",
                content=event.content,
                at=now,
                attachments=_attachments(event),
                author=author or None,
                chatwoot_message_id=event.id,
            )
            return RecordAgentMessage(key, said, "a human agent answered")
        return Ignore("outgoing message")
    if event.message_type != "incoming":
        return Ignore(f"{event.message_type} message")
    attachments = _attachments(event)
    if event.event == "message_updated":
        if not attachments:
            return Ignore("message update without attachments")
        return UpdateAttachments(key, event.id, attachments)
    status = event.conversation.status
    if status not in rules.active_statuses:
        kept = HistoryEntry(
            role="contact",
            content=event.content,
            at=now,
            attachments=attachments,
            chatwoot_message_id=event.id,
        )
        return KeepContactMessage(key, kept, f"conversation is {status or 'of unknown status'}")
    conversation = event.conversation.model_dump(exclude_none=True)
    if event.inbox is not None and event.inbox.name:
        conversation["inbox_name"] = event.inbox.name
    message = InboundMessage(
        key=key,
        chatwoot_message_id=event.id,
        content=event.content,
        kind=_kind(attachments),
        content_type=event.content_type or "text",
        received_at=now,
        attachments=attachments,
        sender=contact.sender_facts(
            event.sender.model_dump(exclude_none=True) if event.sender else {},
            rules.attributes,
        ),
        conversation=contact.conversation_facts(conversation, rules.attributes),
    )
    word = control_words.matches(event.content, rules.handoff_keywords)
    return Buffer(message) if word is None else ControlWord(message, word)


def _attachments(event: MessageEvent) -> tuple[Attachment, ...]:
    return tuple(
        Attachment(
            file_type=a.file_type,
            data_url=a.data_url,
            transcript=a.transcribed_text or None,
            content_type=a.content_type,
            file_size=a.file_size,
            extension=a.extension,
            fallback_title=a.fallback_title,
            coordinates_lat=a.coordinates_lat,
            coordinates_long=a.coordinates_long,
            contact_name=a.contact_name if a.file_type == "contact" else None,
        )
        for a in event.attachments
    )


def _kind(attachments: tuple[Attachment, ...]) -> MessageKind:
    for attachment in attachments:
        if attachment.file_type == "audio":
            return "audio"
        if attachment.file_type == "image":
            return "image"
        return "file"
    return "text"


class WebhookIntake:
    """Carries out the action for one webhook."""

    def __init__(
        self,
        *,
        store: IntakeStore,
        sends: SendConfirmations,
        clock: Clock,
        observer: Observer,
        rules: IntakeRules,
        policy: Callable[[InboundMessage], Awaitable[BufferPolicy]],
        on_scheduled: Callable[[datetime], None] | None = None,
        human_pause: timedelta = timedelta(0),
        bot_states: BotStates | None = None,
    ) -> None:
        """``bot_states``: a status change back into ``BOT_ACTIVE_STATUSES`` also ends a
        hand-off (without it, only a human's pause)."""
        self._human_pause = human_pause
        self._bot_states = bot_states
        self._store = store
        self._sends = sends
        self._clock = clock
        self._observer = observer
        self._rules = rules
        self._policy = policy
        self._on_scheduled = on_scheduled

    async def handle(self, body: Any) -> Mapping[str, Any]:
        now = self._clock.now()
        action = classify(parse(body), self._rules, now)
        if isinstance(action, Ignore):
            return {"status": "ignored", "reason": action.reason}
        if isinstance(action, ConfirmSent):
            # Only the store learns from it; the answer is the same either way.
            await self._sends.confirm_sent(action.key, action.marker, action.chatwoot_message_id)
            return {"status": "ignored", "reason": "the bot's own reply"}
        if isinstance(action, ResumeBot):
            if self._bot_states is not None:
                resumed = await self._bot_states.resume(action.key, now, by_operator=False)
            else:
                resumed = await self._store.resume_bot(action.key, now)
            return {
                "status": "resumed" if resumed else "ignored",
                "reason": f"conversation became {action.status}",
            }
        if isinstance(action, CancelBuffers | RecordAgentMessage):
            human = isinstance(action, RecordAgentMessage) or action.human
            pause_until = now + self._human_pause if human and self._human_pause else None
            if isinstance(action, RecordAgentMessage):
                cancelled = await self._store.record_agent_message(
                    action.key, action.message, now, action.reason, pause_until=pause_until
                )
            else:
                cancelled = await self._store.cancel_open(
                    action.key, now, action.reason, pause_until=pause_until
                )
            if cancelled:
                self._observer.event(
                    "buffer_cancelled", action.key, reason=action.reason, buffers=cancelled
                )
            return {"status": "cancelled", "buffers": cancelled, "reason": action.reason}
        if isinstance(action, KeepContactMessage):
            await self._store.keep_contact_message(action.key, action.message, now)
            return {"status": "kept", "reason": action.reason}
        if isinstance(action, ControlWord):
            return await self._buffer(action.message, now, control_word=action.word)
        if isinstance(action, UpdateAttachments):
            found = await self._store.update_attachments(
                action.key, action.chatwoot_message_id, action.attachments
            )
            return {"status": "updated" if found else "ignored", "reason": "attachments"}
        return await self._buffer(action.message, now)

    async def _buffer(
        self, message: InboundMessage, now: datetime, *, control_word: str | None = None
    ) -> Mapping[str, Any]:
        policy = await self._policy(message)
        result = await self._store.record_incoming(message, policy, now)
        key = message.key
        if result.human_active_until is not None:
            await self._store.keep_contact_message(key, _as_history(message, now), now)
            return {
                "status": "kept",
                "reason": "a human agent is handling this conversation",
                "until": result.human_active_until.isoformat(),
            }
        if not result.stored:
            self._observer.event("message_duplicate", key, message_id=message.chatwoot_message_id)
            return {"status": "duplicate", "message_id": message.chatwoot_message_id}
        self._observer.event(
            "buffer_opened" if result.opened_buffer else "buffer_extended",
            key,
            message_id=message.chatwoot_message_id,
            buffer_id=str(result.buffer_id),
            messages=result.message_count,
            due_at=result.due_at,
        )
        due_at = result.due_at
        # The burst is over: the worker hands it off now instead of after the quiet period.
        if (
            control_word is not None
            and result.buffer_id is not None
            and not result.closed
            and await self._store.close_now(key, result.buffer_id, now, "control_word")
        ):
            due_at = now
        if self._on_scheduled is not None and due_at is not None:
            self._on_scheduled(due_at)
        if control_word is not None:
            return {
                "status": "handing_off",
                "reason": "control_word",
                "buffer_id": str(result.buffer_id),
            }
        return {
            "status": "buffered",
            "buffer_id": str(result.buffer_id),
            "messages": result.message_count,
            "due_at": result.due_at.isoformat() if result.due_at else None,
        }


def _as_history(message: InboundMessage, now: datetime) -> HistoryEntry:
    return HistoryEntry(
        role="contact",
        content=message.content,
        at=now,
        attachments=message.attachments,
        chatwoot_message_id=message.chatwoot_message_id,
    )
