"""The marker chatbuffer puts in ``content_attributes`` of every message it posts.

Chatwoot's message API has no idempotency key, so the marker is how a message is recognised as
ours later: in the webhook Chatwoot echoes back (never buffer the bot's own words, and confirm the
send) and when a retry looks at the conversation before posting again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

#: Key in ``content_attributes`` that marks a message chatbuffer itself posted.
REPLY_MARKER = "chatbuffer"

#: What the bot posts for a buffer: the answer, a hand-off note, or a note that it gave up.
ReplyKind = Literal["reply", "handoff_note", "failure_note"]
REPLY_KINDS: frozenset[str] = frozenset(get_args(ReplyKind))


@dataclass(frozen=True, slots=True)
class Marker:
    buffer_id: uuid.UUID
    kind: ReplyKind
    #: Which part of a reply too long for one message (0: the first, or the only one).
    part: int = 0

    def attributes(self) -> dict[str, Any]:
        """The ``content_attributes`` to post with the message."""
        found: dict[str, Any] = {"buffer_id": str(self.buffer_id), "kind": self.kind}
        if self.part:
            # Only when there is more than one: the markers of earlier versions stay as they were.
            found["part"] = self.part
        return {REPLY_MARKER: found}


def is_marked(attributes: Mapping[str, Any] | None) -> bool:
    return attributes is not None and REPLY_MARKER in attributes


def read(attributes: Mapping[str, Any] | None, *, private: bool) -> Marker | None:
    """The marker in ``attributes``, or None if absent or unreadable.

    Markers written before ``kind`` existed are read by visibility: public means the reply;
    a marker without ``part`` is the first (or only) part.
    """
    if not attributes:
        return None
    raw = attributes.get(REPLY_MARKER)
    if not isinstance(raw, Mapping):
        return None
    try:
        buffer_id = uuid.UUID(str(raw.get("buffer_id")))
    except ValueError:
        return None
    kind = raw.get("kind", "handoff_note" if private else "reply")
    if kind not in REPLY_KINDS:
        return None
    part = raw.get("part", 0)
    if not isinstance(part, int) or isinstance(part, bool) or part < 0:
        return None
    return Marker(buffer_id, kind, part)
