from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from chatbuffer.errors import InvalidSignature
from chatbuffer.intake import signature

NOW = datetime(2026, 8, 14, 10, 0, tzinfo=UTC)
BODY = b'{"event":"message_created","id":1}'
SECRET = "s3cr3t-token"


def signed(ts: datetime, body: bytes = BODY, secret: str = SECRET) -> tuple[str, str]:
    stamp = str(int(ts.timestamp()))
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return stamp, f"sha256={mac}"


def check(stamp: str | None, sig: str | None, body: bytes = BODY) -> None:
    signature.verify(
        secret=SECRET, body=body, timestamp=stamp, signature=sig, now=NOW, max_age_s=300
    )


def test_a_fresh_valid_signature_passes() -> None:
    check(*signed(NOW - timedelta(seconds=299)))


@pytest.mark.parametrize(
    ("stamp_sig", "reason"),
    [
        ((None, "sha256=00"), "missing"),
        (("123", None), "missing"),
        (("yesterday", "sha256=00"), "not a unix timestamp"),
        # Found by the fuzz suite: too large for a float, it must be refused, not overflow.
        (("9" * 400, "sha256=00"), "300 s away"),
        (("-" + "9" * 400, "sha256=00"), "300 s away"),
    ],
)
def test_missing_or_malformed_headers_are_rejected(stamp_sig, reason) -> None:
    with pytest.raises(InvalidSignature, match=reason):
        check(*stamp_sig)


def test_stale_and_future_timestamps_are_rejected() -> None:
    with pytest.raises(InvalidSignature, match="300 s"):
        check(*signed(NOW - timedelta(seconds=301)))
    with pytest.raises(InvalidSignature, match="300 s"):
        check(*signed(NOW + timedelta(seconds=301)))


def test_tampered_body_or_wrong_secret_is_rejected() -> None:
    stamp, sig = signed(NOW)
    with pytest.raises(InvalidSignature, match="does not match"):
        check(stamp, sig, body=BODY + b" ")
    stamp, sig = signed(NOW, secret="other")
    with pytest.raises(InvalidSignature, match="does not match"):
        check(stamp, sig)


def test_body_only_hmac_is_not_accepted() -> None:
    # The scheme signs "timestamp.body"; an HMAC of the body alone (issue #13809) must fail.
    stamp = str(int(NOW.timestamp()))
    body_only = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    with pytest.raises(InvalidSignature):
        check(stamp, f"sha256={body_only}")


def test_a_signature_header_with_non_ascii_text_is_rejected_not_an_error() -> None:
    stamp, _ = signed(NOW)
    with pytest.raises(InvalidSignature, match="does not match"):
        check(stamp, "sha256=\xa0")
