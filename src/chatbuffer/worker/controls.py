"""The kill switch and shadow mode, as wrappers around the worker's ports.

* ``PausableQueue`` claims nothing while the bot is paused: bursts keep arriving, are stored and
  close, and wait in the queue until the bot is resumed.
* ``ControlledChatwoot`` stands between the pipeline and Chatwoot and picks, per conversation and
  per call, what a bot action does: refused while paused (a buffer in flight when the pause
  lands posts nothing, and is retried after the resume), recorded and not sent in a shadowed
  conversation (``ShadowChatwoot``), or sent.
* ``StaleBursts`` tells the pipeline which bursts waited through a pause for too long to be
  answered: those go to a human (``Pipeline``'s hand-over with a private note).

All of them read ``LiveControls``, so every process follows a change within its refresh (5 s).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from chatbuffer.domain import control, marker
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.domain.ports import (
    ChatwootAPI,
    ClaimedJob,
    ConversationSubjects,
    JobQueue,
    LiveControls,
)
from chatbuffer.domain.shadow import shadow_message_id
from chatbuffer.errors import ChatwootError

logger = logging.getLogger(__name__)

#: While paused, a worker looks at the controls this often (they are cached: no query).
PAUSED_LOOK_EVERY = timedelta(seconds=1)


class BotPaused(ChatwootError):
    """A bot action refused because an operator paused the bot; the buffer is retried later."""

    def __init__(self) -> None:
        super().__init__("the bot is paused (chatbuffer pause)", retryable=True)


class PausableQueue:
    """Implements ``JobQueue``: ``queue``, claiming nothing while the bot is paused."""

    def __init__(self, queue: JobQueue, controls: LiveControls) -> None:
        self._queue = queue
        self._controls = controls

    async def _paused(self) -> bool:
        return (await self._controls.current()).pause.paused

    async def claim_due(
        self, now: datetime, owner: str, lease: timedelta, limit: int
    ) -> list[ClaimedJob]:
        if await self._paused():
            return []
        return await self._queue.claim_due(now, owner, lease, limit)

    async def heartbeat(
        self, owner: str, jobs: Sequence[ClaimedJob], lease: timedelta, now: datetime
    ) -> set[Any]:
        return await self._queue.heartbeat(owner, jobs, lease, now)

    async def next_wake_at(self, now: datetime) -> datetime | None:
        if await self._paused():
            # Nothing is claimed until the resume; look again soon to notice it.
            return now + PAUSED_LOOK_EVERY
        return await self._queue.next_wake_at(now)


class ShadowChatwoot:
    """Implements ``ChatwootAPI`` without Chatwoot: nothing is sent. A message gets an id from
    the shadow range (``domain.shadow``), so the send ledger records it like a sent one."""

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:  # noqa: ARG002
        return None

    async def send_message(
        self,
        key: ConversationKey,
        content: str,  # noqa: ARG002 (the ledger records it)
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        found = marker.read(content_attributes, private=private)
        if found is None:
            raise ChatwootError("shadow mode records only chatbuffer's own messages")
        logger.info(
            "shadow mode: %s of buffer %s in %s recorded, not sent",
            found.kind,
            found.buffer_id,
            key,
        )
        return shadow_message_id(found)

    async def set_status(self, key: ConversationKey, status: str) -> None:
        logger.info("shadow mode: status %s of %s not set", status, key)

    async def find_marked(
        self,
        key: ConversationKey,  # noqa: ARG002
        marker: Marker,
        *,
        after_message_id: int | None,  # noqa: ARG002
    ) -> int | None:
        # An intent left by a crash: in shadow mode there is nothing to find, and nothing to
        # send twice, so it counts as recorded.
        return shadow_message_id(marker)


class ControlledChatwoot:
    """Implements ``ChatwootAPI``: each call goes to Chatwoot, to the shadow, or nowhere
    (paused), as the live controls say for the call's conversation at that moment."""

    def __init__(
        self,
        chatwoot: ChatwootAPI,
        controls: LiveControls,
        subjects: ConversationSubjects,
        shadow: ChatwootAPI | None = None,
    ) -> None:
        self._chatwoot = chatwoot
        self._controls = controls
        self._subjects = subjects
        self._shadow = shadow or ShadowChatwoot()

    async def _target(self, key: ConversationKey, *, allowed_paused: bool = False) -> ChatwootAPI:
        controls = await self._controls.current()
        shadowing = controls.shadow and controls.buffered(await self._subjects.subject(key))
        if shadowing:
            return self._shadow
        if controls.pause.paused and not allowed_paused:
            raise BotPaused()
        return self._chatwoot

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        # Turning typing off is allowed while paused: a contact must not be left watching
        # "typing…" for a reply that will not come now.
        await (await self._target(key, allowed_paused=not on)).set_typing(key, on=on)

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        target = await self._target(key)
        return await target.send_message(
            key, content, private=private, content_attributes=content_attributes
        )

    async def set_status(self, key: ConversationKey, status: str) -> None:
        await (await self._target(key)).set_status(key, status)

    async def find_marked(
        self, key: ConversationKey, marker: Marker, *, after_message_id: int | None
    ) -> int | None:
        # Reading the conversation is no bot action: allowed while paused.
        target = await self._target(key, allowed_paused=True)
        return await target.find_marked(key, marker, after_message_id=after_message_id)


class StaleBursts:
    """Which bursts waited through a pause too long to be answered (``PAUSE_STALE_AFTER_MS``)."""

    def __init__(self, controls: LiveControls, stale_after: timedelta) -> None:
        self._controls = controls
        self.stale_after = stale_after

    async def is_stale(
        self, job: ClaimedJob, messages: Sequence[InboundMessage], now: datetime
    ) -> bool:
        if not messages:
            return False
        pause = (await self._controls.current()).pause
        return control.stale_after_pause(
            pause,
            due_at=job.scheduled_for,
            last_message_at=max(m.received_at for m in messages),
            now=now,
            stale_after=self.stale_after,
        )

    def note(self, messages: Sequence[InboundMessage], now: datetime) -> str:
        """The private note a human gets with a stale burst."""
        waited = now - max(m.received_at for m in messages)
        minutes = max(1, round(waited / timedelta(minutes=1)))
        return (
            f"chatbuffer was paused while this contact wrote ({len(messages)} message"
            f"{'s' if len(messages) != 1 else ''}, the last {minutes} min ago): too late for "
            "the bot to answer, over to you."
        )
