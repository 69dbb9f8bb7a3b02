"""Smart windows: how long to wait after a message, from the contact's own rhythm and the burst.

The fixed window (``MESSAGE_BUFFER_DURATION_MS``, 30 s) is sized for the slowest typist: a contact
who sends three messages two seconds apart waits the full 30 s after the last one. Three rules,
each behind its own flag and off by default, shorten or lengthen that wait; none ever waits
longer than the fixed window plus the voice-note allowance.

* **Learned rhythm**: each conversation keeps a running mean and variance of the gaps between
  the contact's messages inside a burst (:class:`Rhythm`). Once a few gaps are known, the wait is
  the mean plus a few standard deviations plus slack, bounded by ``min_ms`` and the fixed window.
  A gap as long as the fixed window is not a gap inside a burst (the burst would have closed) and
  is not learned from.
* **Fast track**: a burst that looks finished and pressing (a question after a long message, or a
  high urgency score) closes after ``fast_track_ms``.
* **Voice-note wait**: a voice note with no transcript yet is usually followed by the contact
  listening back or recording another; the wait after it grows by ``voice_extra_ms``.

Pure: no clock, no storage. The intake asks :func:`quiet_ms` for each message and stores the
updated :class:`Rhythm` with the conversation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Weight of the newest gap in the running mean; about the last ten gaps count.
_ALPHA = 0.2
#: Gaps seen before the learned wait is trusted.
MIN_SAMPLES = 3
#: Standard deviations above the mean gap that the learned wait allows.
_SPREAD = 3.0
#: Added to every learned wait: delivery jitter between WhatsApp, Chatwoot and the webhook.
_SLACK_MS = 1_500
#: A message at least this long explains something; a question after it usually ends the burst.
LONG_MESSAGE_CHARS = 80
#: Urgency (1-10) from which a burst ending in a question is fast-tracked.
URGENT = 8


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """Which rules are on and their bounds (from settings and live flags)."""

    base_ms: int
    min_ms: int = 8_000
    fast_track_ms: int = 6_000
    voice_extra_ms: int = 15_000
    learn: bool = False
    fast_track: bool = False
    voice_wait: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_ms <= self.base_ms:
            raise ValueError("min_ms must be between 0 and the fixed window")
        if self.fast_track_ms < 0 or self.voice_extra_ms < 0:
            raise ValueError("fast_track_ms and voice_extra_ms must not be negative")

    @property
    def enabled(self) -> bool:
        return self.learn or self.fast_track or self.voice_wait


@dataclass(frozen=True, slots=True)
class Rhythm:
    """A contact's gaps between messages inside a burst: running mean and variance (ms)."""

    mean_ms: float = 0.0
    variance: float = 0.0
    samples: int = 0

    def observe(self, gap_ms: float, base_ms: int) -> Rhythm:
        """The rhythm after one more gap; a gap of a whole window or more is not a burst's."""
        if gap_ms < 0 or gap_ms >= base_ms:
            return self
        if self.samples == 0:
            return Rhythm(gap_ms, 0.0, 1)
        delta = gap_ms - self.mean_ms
        mean = self.mean_ms + _ALPHA * delta
        variance = (1 - _ALPHA) * (self.variance + _ALPHA * delta * delta)
        return Rhythm(mean, variance, self.samples + 1)

    def wait_ms(self, policy: WindowPolicy) -> int:
        """The learned wait, bounded; the fixed window until enough gaps are known."""
        if self.samples < MIN_SAMPLES:
            return policy.base_ms
        learned = self.mean_ms + _SPREAD * math.sqrt(self.variance) + _SLACK_MS
        return int(min(policy.base_ms, max(policy.min_ms, learned)))


@dataclass(frozen=True, slots=True)
class MessageShape:
    """What the rules need to know of one message of the burst (never its text)."""

    chars: int
    question: bool = False
    voice_pending: bool = False


def shape_of(text: str | None, *, voice_pending: bool = False) -> MessageShape:
    """The shape of a message's text: its length and whether it ends as a question."""
    stripped = (text or "").rstrip()
    # "?" in Latin scripts (Spanish closes with it too), the full-width and the Arabic marks.
    question = stripped.endswith(("?", "\uff1f", "\u061f"))
    return MessageShape(len(stripped), question, voice_pending)


def looks_finished(burst: Sequence[MessageShape], urgency: int | None = None) -> bool:
    """A burst that ends in a question after a long message, or an urgent one ending in one."""
    if not burst or not burst[-1].question:
        return False
    if urgency is not None and urgency >= URGENT:
        return True
    return any(m.chars >= LONG_MESSAGE_CHARS for m in burst[:-1]) or (
        len(burst) == 1 and burst[0].chars >= LONG_MESSAGE_CHARS
    )


def quiet_ms(
    policy: WindowPolicy,
    rhythm: Rhythm,
    burst: Sequence[MessageShape],
    urgency: int | None = None,
) -> int:
    """How long to wait after the burst's latest message before it closes."""
    wait = policy.base_ms
    if policy.learn:
        wait = rhythm.wait_ms(policy)
    if policy.fast_track and looks_finished(burst, urgency):
        wait = min(wait, policy.fast_track_ms)
    if policy.voice_wait and burst and burst[-1].voice_pending:
        wait += policy.voice_extra_ms
    return wait


@dataclass(frozen=True, slots=True)
class WindowState:
    """What the intake keeps per conversation for the smart windows."""

    rhythm: Rhythm = Rhythm()
    #: The contact's latest message: its Chatwoot id (a redelivery changes nothing) and arrival.
    last_message_id: int | None = None
    last_message_at_ms: float | None = None
    #: The shapes of the burst still open, and when it closes unless another message comes.
    burst: tuple[MessageShape, ...] = ()
    closes_at_ms: float | None = None
    #: The wait chosen after the latest message.
    quiet_ms: int = 0


def advance(
    state: WindowState,
    message_id: int,
    at_ms: float,
    shape: MessageShape,
    policy: WindowPolicy,
    urgency: int | None = None,
) -> WindowState:
    """The state after the contact's message ``message_id`` arrived at ``at_ms`` (epoch ms).

    A message already seen (Chatwoot redelivers, and ids only grow within a conversation) leaves
    the state as it is. A message after the open burst closed starts a new one.
    """
    if state.last_message_id is not None and message_id <= state.last_message_id:
        return state
    rhythm = state.rhythm
    if state.last_message_at_ms is not None:
        rhythm = rhythm.observe(at_ms - state.last_message_at_ms, policy.base_ms)
    still_open = state.closes_at_ms is not None and at_ms < state.closes_at_ms
    burst = (*state.burst, shape) if still_open else (shape,)
    wait = quiet_ms(policy, rhythm, burst, urgency)
    return WindowState(
        rhythm=rhythm,
        last_message_id=message_id,
        last_message_at_ms=at_ms,
        burst=burst,
        closes_at_ms=at_ms + wait,
        quiet_ms=wait,
    )
