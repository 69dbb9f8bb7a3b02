"""The feature flags, typed, and how one is evaluated for a conversation.

A flag is evaluated per conversation (``is_enabled(flag, key)``) although today every flag is
simply on or off for all of them: the conversation is the subject a later percentage rollout
would hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from chatbuffer.domain.model import ConversationKey


class Flag(StrEnum):
    """The seed's four flags, then chatbuffer's own; the value is the ``feature_flags.flag_name``
    (a flag with no row there is at its default)."""

    MESSAGE_BUFFERING = "message_buffering"
    TYPING_INDICATORS = "typing_indicators"
    ENHANCED_AI_PROCESSING = "enhanced_ai_processing"
    RESPONSE_QUALITY_ENHANCEMENT = "response_quality_enhancement"
    #: Smart windows (``domain.smart_window``), each rule on its own, off until an operator
    #: turns it on.
    SMART_WINDOW_RHYTHM = "smart_window_rhythm"
    SMART_WINDOW_FAST_TRACK = "smart_window_fast_track"
    SMART_WINDOW_VOICE_WAIT = "smart_window_voice_wait"

    @property
    def default(self) -> bool:
        """The seeded value, also used while a flag's row is missing."""
        return self in _ON_BY_DEFAULT

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


#: The flags the seed plan's ``feature_flags`` rows hold (migration 0001 stores them); the
#: others have no row until an operator sets them.
SEEDED = (
    Flag.MESSAGE_BUFFERING,
    Flag.TYPING_INDICATORS,
    Flag.ENHANCED_AI_PROCESSING,
    Flag.RESPONSE_QUALITY_ENHANCEMENT,
)

_ON_BY_DEFAULT = frozenset(
    {Flag.MESSAGE_BUFFERING, Flag.TYPING_INDICATORS, Flag.ENHANCED_AI_PROCESSING}
)

_DESCRIPTIONS = {
    Flag.MESSAGE_BUFFERING: "Enable 30-second message buffering",
    Flag.TYPING_INDICATORS: "Show typing indicators during processing",
    Flag.ENHANCED_AI_PROCESSING: "Use aggregated context for AI responses",
    Flag.RESPONSE_QUALITY_ENHANCEMENT: "Apply post-processing to responses",
    Flag.SMART_WINDOW_RHYTHM: "Wait as long as this contact's own pauses call for",
    Flag.SMART_WINDOW_FAST_TRACK: "Close early a burst ending in a question after a long message",
    Flag.SMART_WINDOW_VOICE_WAIT: "Wait longer after a voice note with no transcript yet",
}


def parse(rows: Mapping[str, bool]) -> dict[Flag, bool]:
    """The stored rows as typed flags; a name this version does not know is ignored."""
    known = {f.value: f for f in Flag}
    return {known[name]: enabled for name, enabled in rows.items() if name in known}


def evaluate(flag: Flag, settings: Mapping[Flag, bool], key: ConversationKey) -> bool:  # noqa: ARG001
    """Whether ``flag`` is on for the conversation ``key`` (all-or-nothing for now)."""
    return settings.get(flag, flag.default)
