"""How long to wait before the next attempt at a buffer, as data and pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with a cap, honouring a server's Retry-After up to ``max_delay``."""

    max_attempts: int = 5
    base_delay: timedelta = timedelta(seconds=2)
    max_delay: timedelta = timedelta(minutes=5)

    def delay(self, attempt: int, *, retry_after: float | None = None) -> timedelta:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        exponential: timedelta = self.base_delay * (2 ** max(0, attempt - 1))
        wait = exponential
        if retry_after is not None and retry_after > 0:
            # A server-directed delay wins over our guess, within our cap.
            wait = timedelta(seconds=retry_after)
        return min(wait, self.max_delay)

    def gives_up(self, attempt: int, *, retryable: bool) -> bool:
        """Whether attempt number ``attempt`` was the last one."""
        return not retryable or attempt >= self.max_attempts


#: 4xx answers that mean "not now" rather than "never": timeout, conflict, too early, too many.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 425, 429})


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer with this status may succeed when tried again."""
    return status >= 500 or status in RETRYABLE_CLIENT_STATUSES


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None when absent or a date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
