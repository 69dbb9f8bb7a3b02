"""How long a conversation's buffer waits after a message, when smart windows are on.

The fixed window comes from the settings; each smart-window rule is a live flag evaluated for the
message's conversation and inbox. With every rule off (the default) nothing is read or written.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.control import Controls, subject_of
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import InboundMessage
from chatbuffer.domain.ports import WindowStates
from chatbuffer.domain.smart_window import WindowPolicy, advance, shape_of
from chatbuffer.domain.urgency import score


class SmartWindows:
    """Chooses the quiet period of a buffered message's buffer."""

    def __init__(self, states: WindowStates, bounds: WindowPolicy) -> None:
        self._states = states
        self._bounds = bounds

    async def policy(
        self, message: InboundMessage, base: BufferPolicy, controls: Controls
    ) -> BufferPolicy:
        subject = subject_of(message)
        rules = replace(
            self._bounds,
            learn=controls.flag(Flag.SMART_WINDOW_RHYTHM, subject),
            fast_track=controls.flag(Flag.SMART_WINDOW_FAST_TRACK, subject),
            voice_wait=controls.flag(Flag.SMART_WINDOW_VOICE_WAIT, subject),
        )
        if not rules.enabled:
            return base
        shape = shape_of(
            message.content,
            voice_pending=any(
                a.file_type == "audio" and not a.transcript for a in message.attachments
            ),
        )
        at_ms = message.received_at.timestamp() * 1000
        # The message's own urgency: the fast track needs only whether the question that may
        # end the burst is pressing, and the earlier messages' text is not kept.
        urgency = score([message]) if rules.fast_track else None
        state = await self._states.update(
            message.key,
            lambda current: advance(
                current, message.chatwoot_message_id, at_ms, shape, rules, urgency
            ),
        )
        return replace(base, quiet_period=timedelta(milliseconds=state.quiet_ms))
