"""Shadow mode's stand-in for Chatwoot's message ids.

A shadowed conversation's reply goes through the send ledger like any other (intent, then a
confirmed id), so it is stored, readable and never asked for twice; only the id is not
Chatwoot's. Shadow ids come from a range Chatwoot's own ids do not reach, and derive from the
buffer and the kind of message, so a retry "finds" the message it recorded before instead of
recording another.
"""

from __future__ import annotations

from chatbuffer.domain.marker import REPLY_KINDS, Marker

#: Chatwoot's message ids are a PostgreSQL sequence; a deployment would need 8 * 10**15
#: messages to reach this. The range's top stays below 2**53, so JSON readers keep it exact.
SHADOW_IDS_FROM = 8 * 10**15
_SPAN = 10**15
_KINDS = sorted(REPLY_KINDS)


def shadow_message_id(marker: Marker) -> int:
    """The id a shadowed message of ``marker`` is recorded with (the same on every try)."""
    slot = (marker.buffer_id.int % (_SPAN // len(_KINDS))) * len(_KINDS)
    return SHADOW_IDS_FROM + slot + _KINDS.index(marker.kind)


def is_shadow(message_id: int | None) -> bool:
    """Whether a recorded message id stands for a message shadow mode did not send."""
    return message_id is not None and SHADOW_IDS_FROM <= message_id < SHADOW_IDS_FROM + _SPAN
