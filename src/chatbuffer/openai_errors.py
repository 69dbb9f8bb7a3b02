"""Translation of the ``openai`` SDK's exceptions into chatbuffer's error tree.

Shared by the two adapters that talk to an OpenAI-compatible endpoint (the reply model and the
transcriber), so both classify timeouts, HTTP answers and connection failures the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import openai

from chatbuffer.domain.retry import parse_retry_after, retryable_status
from chatbuffer.errors import DependencyError


@contextmanager
def translated(error: type[DependencyError], what: str) -> Iterator[None]:
    """Re-raise SDK failures inside the block as ``error``; ``what`` names the endpoint."""
    try:
        yield
    except openai.APITimeoutError as exc:
        raise error(f"the {what} did not answer in time") from exc
    except openai.APIStatusError as exc:
        status = exc.status_code
        raise error(
            f"the {what} answered {status}",
            retryable=retryable_status(status),
            retry_after=parse_retry_after(exc.response.headers.get("retry-after")),
            rate_limited=status == 429,
            status=status,
        ) from exc
    except openai.APIError as exc:
        raise error(f"could not reach the {what}: {type(exc).__name__}") from exc
