"""The errors chatbuffer raises, as one tree.

    ChatbufferError
    ├── ConfigurationError          a setting is missing or contradicts another (start-up stops)
    │   └── UnknownRevision         `migrate --to` names a revision this release does not ship
    ├── SchemaNotReady              the database is not migrated to the version this code needs
    ├── StorageUnavailable          the database could not be reached or failed mid-transaction
    ├── WebhookRejected             a webhook request is refused; carries the HTTP status
    │   ├── PayloadTooLarge         413
    │   ├── InvalidSignature        401
    │   └── MalformedPayload        400 / 422
    └── DependencyError             a call to something outside failed; retried by the worker
        ├── ChatwootError           the Chatwoot API failed or refused a call
        ├── ModelError              the LLM failed, timed out or answered something unusable
        │   ├── InvalidModelAnswer  its answer is not the JSON the prompt asks for (one repair)
        │   └── ImagesRefused       the endpoint does not take images (asked again without)
        └── AttachmentError         an attachment could not be downloaded or read
            └── TranscriptionError  a voice note could not be fetched or transcribed

Adapters translate foreign exceptions (httpx2, openai, sqlalchemy) into this tree at their edge,
so the worker decides retries from our types only.
"""

from __future__ import annotations


class ChatbufferError(Exception):
    """Root of every error chatbuffer raises on purpose."""


class ConfigurationError(ChatbufferError):
    """A setting is missing or contradicts another; the message names it."""


class UnknownRevision(ConfigurationError):
    """``chatbuffer migrate --to`` names a revision this release does not ship."""


class SchemaNotReady(ChatbufferError):
    """The database schema is not one this code can run on (older, or newer and incompatible)."""


class StorageUnavailable(ChatbufferError):
    """The database did not answer (down, restarting, out of connections); nothing was stored."""


class WebhookRejected(ChatbufferError):
    """A webhook request that is refused with a 4xx status and a JSON message."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class PayloadTooLarge(WebhookRejected):
    """The body is larger than the service accepts."""

    status_code = 413


class InvalidSignature(WebhookRejected):
    """The Chatwoot signature is missing, stale or wrong."""

    status_code = 401


class MalformedPayload(WebhookRejected):
    """The body is not JSON, or not a Chatwoot event the service can read."""

    status_code = 400


class DependencyError(ChatbufferError):
    """A call to an outside service failed.

    ``retryable`` is False for answers that will not change on a retry (a 4xx other than 408/429),
    ``retry_after`` carries a server-directed delay in seconds when one was given, and
    ``rate_limited`` marks a 429: the service refused because of this client's request rate;
    ``status`` is the HTTP status the service answered with, if it answered.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        rate_limited: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.status = status

    @property
    def credentials_refused(self) -> bool:
        """The service refused who we are (401) or what we may do (403): no retry helps until
        an operator changes a token or key."""
        return self.status in (401, 403)


class ChatwootError(DependencyError):
    """The Chatwoot API failed or refused a call; ``status`` is its HTTP status, if it answered."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after, status=status)


class ModelError(DependencyError):
    """The LLM failed, timed out, or answered with something that is not a usable decision."""


class InvalidModelAnswer(ModelError):
    """The model answered, but not with the JSON object the prompt asks for.

    ``answer`` is what it wrote and ``problem`` what is wrong with it, so the worker can ask it
    once to repair its answer before the ordinary retry policy takes over.
    """

    def __init__(self, message: str, *, answer: str, problem: str) -> None:
        super().__init__(message)
        self.answer = answer
        self.problem = problem


class ImagesRefused(ModelError):
    """The endpoint refused a request because it carried images (a model without vision)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class AttachmentError(DependencyError):
    """An attachment could not be downloaded or read.

    Not retryable when the attachment itself is the problem (not on the Chatwoot host, too large,
    gone, unreadable): the burst is then answered with a note in its place.
    """


class TranscriptionError(AttachmentError):
    """A voice note could not be downloaded or transcribed.

    Not retryable when the attachment itself is the problem (not on the Chatwoot host, too large,
    gone): the burst is then answered with a marker in place of the transcript.
    """
