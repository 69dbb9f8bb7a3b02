"""Chatwoot's webhook signature: ``sha256=HMAC(secret, "{timestamp}.{raw body}")``."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from chatbuffer.errors import InvalidSignature


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    *,
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: datetime,
    max_age_s: int,
) -> None:
    """Raise :class:`InvalidSignature` unless the request is signed, fresh and authentic.

    The timestamp is checked in both directions: a far-future stamp is as suspect as a stale one,
    and the window bounds how long a captured request can be replayed.
    """
    if not timestamp or not signature:
        raise InvalidSignature("missing X-Chatwoot-Signature or X-Chatwoot-Timestamp header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("X-Chatwoot-Timestamp is not a unix timestamp") from None
    # Integer arithmetic: a stamp with hundreds of digits must be refused, not overflow a float.
    if abs(int(now.timestamp()) - sent_at) > max_age_s:
        raise InvalidSignature(
            f"X-Chatwoot-Timestamp is more than {max_age_s} s away from this server's clock"
        )
    # compare_digest refuses non-ASCII text; such a header cannot be a hex digest anyway.
    if not signature.isascii() or not hmac.compare_digest(
        expected_signature(secret, timestamp, body), signature
    ):
        raise InvalidSignature("X-Chatwoot-Signature does not match the body")
