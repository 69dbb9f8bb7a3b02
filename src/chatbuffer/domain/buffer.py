"""When a buffer closes, and which buffer a new message joins.

A buffer collects one contact's burst. It closes ``quiet_period`` after its last message (each
message pushes that later), never later than ``max_age`` after its first message, and at once when
it holds ``max_size`` messages. A message that finds no open buffer opens a new one; so does a
message whose conversation's buffer is already closed or being processed, so it is never lost and
never merged into a reply that is already being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """The three limits of a buffer."""

    quiet_period: timedelta
    max_age: timedelta
    max_size: int

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be at least 1")
        if self.quiet_period < timedelta(0) or self.max_age < timedelta(0):
            raise ValueError("quiet_period and max_age must not be negative")

    def without_waiting(self) -> BufferPolicy:
        """The policy used when buffering is switched off: every message closes its own buffer."""
        return BufferPolicy(quiet_period=timedelta(0), max_age=timedelta(0), max_size=1)


@dataclass(frozen=True, slots=True)
class BufferWindow:
    """The timing facts of one buffer."""

    started_at: datetime
    last_message_at: datetime
    message_count: int


def due_at(window: BufferWindow, policy: BufferPolicy) -> datetime:
    """The instant the buffer closes and becomes due for processing."""
    if window.message_count >= policy.max_size:
        return window.last_message_at
    return min(window.last_message_at + policy.quiet_period, window.started_at + policy.max_age)


def is_open(window: BufferWindow, policy: BufferPolicy, now: datetime) -> bool:
    """Whether a message arriving at ``now`` may still join this buffer."""
    return window.message_count < policy.max_size and now < due_at(window, policy)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a new message goes.

    ``opens_new`` is True when the message starts a new buffer (and the previous one, if any,
    stays closed as it is). ``window`` is the buffer's timing after the message, ``due`` its
    closing instant and ``closes_now`` whether the message filled it.
    """

    opens_new: bool
    window: BufferWindow
    due: datetime
    closes_now: bool


def place(current: BufferWindow | None, policy: BufferPolicy, now: datetime) -> Placement:
    """Decide how a message arriving at ``now`` joins ``current`` (the open buffer, if any)."""
    if current is not None and is_open(current, policy, now):
        window = BufferWindow(
            started_at=current.started_at,
            last_message_at=max(now, current.last_message_at),
            message_count=current.message_count + 1,
        )
        opens_new = False
    else:
        window = BufferWindow(started_at=now, last_message_at=now, message_count=1)
        opens_new = True
    due = due_at(window, policy)
    return Placement(
        opens_new=opens_new,
        window=window,
        due=due,
        closes_now=window.message_count >= policy.max_size or due <= now,
    )


def closed_by_quiet(window: BufferWindow, due: datetime, policy: BufferPolicy) -> bool:
    """Whether a buffer closed because its contact paused, rather than by a cap.

    Derived from the buffer's own times: the age cap and the size cap both close a buffer before
    its last message plus the quiet period.
    """
    return window.message_count < policy.max_size and (
        due >= window.last_message_at + policy.quiet_period
    )


def may_fold(window: BufferWindow, due: datetime, policy: BufferPolicy, now: datetime) -> bool:
    """Whether a buffer whose reply went stale (the contact wrote again) may be folded into the
    newer buffer instead of being answered.

    Only a buffer closed by quiet, and only while its first message is younger than the age cap:
    the newer buffer inherits that age, so the fold never delays an answer past the cap plus one
    model call. A buffer closed by a cap is answered with its own messages.
    """
    return closed_by_quiet(window, due, policy) and now < window.started_at + policy.max_age


def merged(older: BufferWindow, newer: BufferWindow) -> BufferWindow:
    """The newer buffer after taking the older one's messages: it is as old as the oldest."""
    return BufferWindow(
        started_at=min(older.started_at, newer.started_at),
        last_message_at=max(older.last_message_at, newer.last_message_at),
        message_count=older.message_count + newer.message_count,
    )


def close_reason(window: BufferWindow, due: datetime, policy: BufferPolicy) -> str:
    """Why a buffer closed: ``max_size``, ``max_age`` or ``quiet`` (for the operators' metrics).

    Read from the caps only, so a quiet period chosen per conversation (smart windows) still
    reads as ``quiet``. A buffer closed with its last message (a conversation outside the
    buffered path, whose every message closes its own buffer) counts as full.
    """
    if window.message_count >= policy.max_size or due <= window.last_message_at:
        return "max_size"
    if due >= window.started_at + policy.max_age:
        return "max_age"
    return "quiet"
