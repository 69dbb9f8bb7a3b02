"""What operators control while the service runs: flags (global and per inbox) and the
percentage rollout of the buffered path with its canaries.

Stored as named text values (``bot_controls`` rows, read by every replica at most every few
seconds); this module turns them into a typed ``Controls`` and answers, for one conversation,
which path it takes and whether a flag is on. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chatbuffer.domain.flags import Flag
from chatbuffer.domain.model import ConversationKey, InboundMessage

#: Rollout buckets: a conversation's bucket is stable, so its path never flips while the
#: percentage stays, and raising the percentage only adds buckets.
BUCKETS = 10_000

ROLLOUT_PERCENT = "rollout.percent"
#: "on" while the buffered share of conversations runs in shadow mode (nothing is sent).
ROLLOUT_SHADOW = "rollout.shadow"
#: The kill switch: "on" while the bot is paused; who paused or resumed it, and when (ISO 8601).
PAUSED = "pause.on"
PAUSED_BY = "pause.by"
PAUSED_AT = "pause.at"
RESUMED_BY = "pause.resumed_by"
RESUMED_AT = "pause.resumed_at"
_CANARY_PREFIX = "rollout.canary."
_INBOX_FLAG = re.compile(r"flag\.([a-z_]+)\.inbox\.([0-9]+)")
_CANARY = re.compile(r"(inbox|contact):([0-9]{1,12})")


@dataclass(frozen=True, slots=True)
class Subject:
    """The conversation a decision is about, with what a canary or an inbox flag can name."""

    key: ConversationKey
    inbox_id: int | None = None
    contact_id: int | None = None


@dataclass(frozen=True, slots=True)
class PauseState:
    """The kill switch as stored: on or off, and the last pause and resume (who, when)."""

    paused: bool = False
    paused_by: str | None = None
    paused_at: datetime | None = None
    resumed_by: str | None = None
    resumed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Controls:
    """Every live control, as stored; a missing row means the default."""

    flags: Mapping[Flag, bool] = field(default_factory=dict)
    inbox_flags: Mapping[tuple[Flag, int], bool] = field(default_factory=dict)
    rollout_percent: float = 100.0
    canaries: frozenset[str] = frozenset()
    #: The buffered share runs in shadow: asked, recorded, never sent.
    shadow: bool = False
    pause: PauseState = PauseState()

    def flag(self, flag: Flag, subject: Subject) -> bool:
        """An inbox's own setting wins over the global one, which wins over the default."""
        if subject.inbox_id is not None:
            own = self.inbox_flags.get((flag, subject.inbox_id))
            if own is not None:
                return own
        return self.flags.get(flag, flag.default)

    def buffered(self, subject: Subject) -> bool:
        """Whether the conversation takes the buffered path (else: the immediate one)."""
        if not self.flag(Flag.MESSAGE_BUFFERING, subject):
            return False
        if self.is_canary(subject):
            return True
        return bucket(subject.key) < self.rollout_percent * BUCKETS / 100

    def shadowed(self, subject: Subject) -> bool:
        """Whether what the bot would post in the conversation is recorded instead of sent."""
        return self.shadow and self.buffered(subject)

    def is_canary(self, subject: Subject) -> bool:
        return (subject.inbox_id is not None and f"inbox:{subject.inbox_id}" in self.canaries) or (
            subject.contact_id is not None and f"contact:{subject.contact_id}" in self.canaries
        )


def stale_after_pause(
    pause: PauseState,
    *,
    due_at: datetime,
    last_message_at: datetime,
    now: datetime,
    stale_after: timedelta,
) -> bool:
    """Whether a burst that waited through a pause is too old to answer now, and goes to a
    human instead: it was due before the last resume, and its last message is older than
    ``stale_after``. A burst due after the resume (a replay, a later retry) is answered as
    always, however old."""
    if pause.paused or pause.resumed_at is None:
        return False
    return due_at <= pause.resumed_at and now - last_message_at >= stale_after


def pause_values(by: str, at: datetime) -> dict[str, str | None]:
    """The rows that pause the bot; the last resume is kept, for the record."""
    return {PAUSED: "on", PAUSED_BY: by, PAUSED_AT: at.isoformat()}


def resume_values(by: str, at: datetime) -> dict[str, str | None]:
    """The rows that resume the bot; the last pause is kept, for the record and for telling
    the buffers that waited through it."""
    return {PAUSED: None, RESUMED_BY: by, RESUMED_AT: at.isoformat()}


def _pause_state(rows: Mapping[str, str]) -> PauseState:
    return PauseState(
        paused=rows.get(PAUSED) == "on",
        paused_by=rows.get(PAUSED_BY),
        paused_at=_instant(rows.get(PAUSED_AT)),
        resumed_by=rows.get(RESUMED_BY),
        resumed_at=_instant(rows.get(RESUMED_AT)),
    )


def _instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    # An instant without a zone cannot be compared with the service's: ignored, like any
    # value this version cannot read.
    return at if at.tzinfo is not None else None


def subject_of(message: InboundMessage) -> Subject:
    """The conversation of a webhook's message, with its inbox and contact as Chatwoot sent them."""
    return Subject(
        message.key,
        inbox_id=_number(message.conversation.get("inbox_id")),
        contact_id=_number(message.sender.get("id")),
    )


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def bucket(key: ConversationKey) -> int:
    """The conversation's rollout bucket, 0 to ``BUCKETS - 1``: the same on every replica and
    every release (a hash of the key, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{key.account_id}:{key.conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def parse(flag_rows: Mapping[str, bool], control_rows: Mapping[str, str]) -> Controls:
    """The stored rows as ``Controls``; names and values this version does not know are
    ignored, so an older replica reads a newer release's rows without failing."""
    known = {f.value: f for f in Flag}
    flags = {known[name]: on for name, on in flag_rows.items() if name in known}
    inbox_flags: dict[tuple[Flag, int], bool] = {}
    canaries: set[str] = set()
    for name, value in control_rows.items():
        found = _INBOX_FLAG.fullmatch(name)
        if found and found[1] in known and value in {"on", "off"}:
            inbox_flags[known[found[1]], int(found[2])] = value == "on"
        elif name.startswith(_CANARY_PREFIX) and _CANARY.fullmatch(name[len(_CANARY_PREFIX) :]):
            canaries.add(name[len(_CANARY_PREFIX) :])
    return Controls(
        flags=flags,
        inbox_flags=inbox_flags,
        rollout_percent=_percent(control_rows.get(ROLLOUT_PERCENT)),
        canaries=frozenset(canaries),
        shadow=control_rows.get(ROLLOUT_SHADOW) == "on",
        pause=_pause_state(control_rows),
    )


def _percent(value: str | None) -> float:
    try:
        percent = float(value) if value is not None else 100.0
    except ValueError:
        return 100.0
    return min(max(percent, 0.0), 100.0)


def inbox_flag_name(flag: Flag, inbox_id: int) -> str:
    return f"flag.{flag.value}.inbox.{inbox_id}"


def canary_name(canary: str) -> str:
    """The row name of a canary written as ``inbox:ID`` or ``contact:ID``; ``ValueError`` if not."""
    if not _CANARY.fullmatch(canary):
        raise ValueError(f"a canary is inbox:ID or contact:ID, not {canary!r}")
    return _CANARY_PREFIX + canary


def percent_value(text: str) -> str:
    """A rollout percentage as stored; ``ValueError`` unless it is a number from 0 to 100."""
    try:
        percent = float(text.strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"a percentage is a number from 0 to 100, not {text!r}") from None
    if not 0 <= percent <= 100:
        raise ValueError(f"a percentage is a number from 0 to 100, not {text!r}")
    return f"{percent:g}"
