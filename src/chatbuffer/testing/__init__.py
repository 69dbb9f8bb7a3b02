"""Test doubles that are real implementations of the ports (no mocking library needed).

The store's ports are :class:`chatbuffer.testing.memory.MemoryStore`; the live controls'
:class:`chatbuffer.testing.controls.MemoryControls`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chatbuffer.domain import marker as markers
from chatbuffer.domain.aggregation import Prompt, ReadKind
from chatbuffer.domain.model import (
    Attachment,
    AttachmentContent,
    ConversationKey,
    HistoryEntry,
    ModelDecision,
)
from chatbuffer.domain.ports import EventName, ModelExchange
from chatbuffer.errors import ChatwootError
from chatbuffer.testing.controls import MemoryBotStates as MemoryBotStates
from chatbuffer.testing.controls import MemoryControls as MemoryControls
from chatbuffer.testing.memory import MemoryStore as MemoryStore
from chatbuffer.testing.transcripts import MemoryBurstArchive as MemoryBurstArchive
from chatbuffer.testing.windows import MemoryWindowStates as MemoryWindowStates


class FakeClock:
    """A clock that moves only when told; ``sleep`` returns once ``advance`` passes its deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        if deadline <= self._now:
            await asyncio.sleep(0)  # noqa: TID251 - yield to the loop, no time passes
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((deadline, future))
        await future

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self._now += step
        due = [(d, f) for d, f in self._sleepers if d <= self._now]
        self._sleepers = [(d, f) for d, f in self._sleepers if d > self._now]
        for _, future in due:
            if not future.done():
                future.set_result(None)
        return self._now


@dataclass
class Sent:
    key: ConversationKey
    content: str
    private: bool
    content_attributes: Mapping[str, Any] | None
    message_id: int = 0


@dataclass
class RecordingChatwoot:
    """Implements ``ChatwootAPI`` in memory; ``fail_with`` makes the next sends raise, and
    ``lose_answers`` makes the next sends take effect but raise a timeout (a slow Chatwoot).
    ``while_posting`` runs at the start of each send, before the message exists (a POST on its
    way: note the time, look at the store, let another worker act)."""

    sent: list[Sent] = field(default_factory=list)
    typing: list[tuple[ConversationKey, bool]] = field(default_factory=list)
    statuses: list[tuple[ConversationKey, str]] = field(default_factory=list)
    fail_with: list[ChatwootError] = field(default_factory=list)
    lose_answers: int = 0
    lookups: list[tuple[ConversationKey, markers.Marker, int | None]] = field(default_factory=list)
    next_id: int = 1000
    while_posting: Callable[[], Awaitable[None]] | None = None

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        self.typing.append((key, on))

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        if self.while_posting is not None:
            await self.while_posting()
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.next_id += 1
        self.sent.append(Sent(key, content, private, content_attributes, self.next_id))
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise ChatwootError("Chatwoot did not answer POST …/messages in time")
        return self.next_id

    async def find_marked(
        self, key: ConversationKey, marker: markers.Marker, *, after_message_id: int | None
    ) -> int | None:
        self.lookups.append((key, marker, after_message_id))
        for sent in self.sent:
            seen = markers.read(sent.content_attributes, private=sent.private)
            if sent.key == key and seen == marker:
                return sent.message_id
        return None

    async def set_status(self, key: ConversationKey, status: str) -> None:
        self.statuses.append((key, status))


@dataclass
class ScriptedReplyModel:
    """Implements ``ReplyModel`` with a function of the prompt; records every prompt."""

    script: Callable[[Prompt], ModelDecision | Exception]
    prompts: list[Prompt] = field(default_factory=list)

    async def decide(self, prompt: Prompt) -> ModelDecision:
        self.prompts.append(prompt)
        answer = self.script(prompt)
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class ScriptedSummarizer:
    """Implements ``Summarizer``: answers ``script(prompt)`` (an exception in it is raised), by
    default the folded turns' lines joined by " / "; records every prompt."""

    script: Callable[[Prompt], str | Exception] | None = None
    prompts: list[Prompt] = field(default_factory=list)

    async def summarize(self, prompt: Prompt) -> str:
        self.prompts.append(prompt)
        if self.script is None:
            folded = prompt.user.split("oldest first:\n<conversation_history>\n", 1)[-1]
            lines = folded.split("\n</conversation_history>", 1)[0].splitlines()
            return " / ".join(lines)
        answer = self.script(prompt)
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class StaticHistorySource:
    """Implements ``HistorySource`` from a list of earlier messages per conversation (oldest
    first, each with its Chatwoot id); ``fail_with`` makes the next fetches raise. Records
    every fetch as (key, before, limit)."""

    messages: dict[ConversationKey, list[HistoryEntry]] = field(default_factory=dict)
    fail_with: list[Exception] = field(default_factory=list)
    fetches: list[tuple[ConversationKey, int, int]] = field(default_factory=list)

    async def earlier(
        self, key: ConversationKey, before_message_id: int, limit: int
    ) -> list[HistoryEntry]:
        self.fetches.append((key, before_message_id, limit))
        if self.fail_with:
            raise self.fail_with.pop(0)
        found = [
            m
            for m in self.messages.get(key, [])
            if m.chatwoot_message_id is not None and m.chatwoot_message_id < before_message_id
        ]
        return found[-limit:] if limit > 0 else []


@dataclass
class StaticAttachmentReader:
    """Implements ``AttachmentReader`` from a table of answers by ``data_url`` (an exception in
    it is raised); records every read."""

    answers: dict[str, AttachmentContent | Exception] = field(default_factory=dict)
    reads: list[tuple[str | None, ReadKind]] = field(default_factory=list)

    async def read(self, attachment: Attachment, kind: ReadKind) -> AttachmentContent:
        self.reads.append((attachment.data_url, kind))
        answer = self.answers.get(attachment.data_url or "")
        if answer is None:
            return AttachmentContent(problem="it could not be downloaded")
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class RecordingObserver:
    """Keeps every event for assertions."""

    events: list[tuple[EventName, ConversationKey, dict[str, Any]]] = field(default_factory=list)

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None:
        self.events.append((name, key, fields))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]


@dataclass
class MemoryTraceLog:
    """Implements ``TraceLog`` in memory."""

    exchanges: list[ModelExchange] = field(default_factory=list)

    async def record_exchange(self, exchange: ModelExchange) -> None:
        self.exchanges.append(exchange)
