"""``AttachmentFetcher``: downloads an attachment, only from Chatwoot, size- and time-capped.

A webhook's ``data_url`` is data from outside. Fetching it blindly would let a crafted payload
make the service request internal addresses (SSRF), so the first URL must be on
``CHATWOOT_BASE_URL``'s origin. Chatwoot answers ActiveStorage URLs with a redirect to its storage
service (S3, GCS, its own disk); redirects issued from there are followed, up to a few hops. The
API token is never sent: the URLs are signed, and a token must not travel to a storage host.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2

from chatbuffer.domain.model import Attachment
from chatbuffer.domain.retry import parse_retry_after, retryable_status
from chatbuffer.errors import AttachmentError, TranscriptionError

MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class Download:
    content: bytes
    filename: str
    content_type: str | None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class AttachmentFetcher:
    def __init__(
        self,
        *,
        chatwoot_base_url: str,
        max_bytes: int,
        timeout_s: float,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._origin = _origin(chatwoot_base_url)
        self._max_bytes = max_bytes
        self._client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout_s),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            transport=transport,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def allowed(self, url: str) -> bool:
        scheme, host, _ = origin = _origin(url)
        return scheme in {"http", "https"} and bool(host) and origin == self._origin

    async def fetch(self, url: str, *, max_bytes: int | None = None) -> Download:
        """Download ``url``, refusing more than ``max_bytes`` (default: the fetcher's cap; a
        smaller one for images, which travel to the model inside the request)."""
        limit = self._max_bytes if max_bytes is None else min(max_bytes, self._max_bytes)
        if not self.allowed(url):
            raise AttachmentError(
                "the attachment is not on the Chatwoot host; it was not downloaded",
                retryable=False,
            )
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    status = response.status_code
                    raise AttachmentError(
                        f"the attachment download answered {status}",
                        # Chatwoot answers 404 until the upload has been stored.
                        retryable=status == 404 or retryable_status(status),
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise self._too_large(limit)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large(limit)
                    chunks.append(chunk)
                filename = urlsplit(str(response.url)).path.rsplit("/", 1)[-1] or "voice.ogg"
                return Download(
                    content=b"".join(chunks),
                    filename=filename,
                    content_type=response.headers.get("content-type"),
                )
        except httpx2.TooManyRedirects as exc:
            raise AttachmentError("the attachment redirected too often", retryable=False) from exc
        except httpx2.TimeoutException as exc:
            raise AttachmentError("the attachment download timed out") from exc
        except httpx2.HTTPError as exc:
            raise AttachmentError(
                f"the attachment could not be downloaded: {type(exc).__name__}"
            ) from exc

    @staticmethod
    def _too_large(limit: int) -> AttachmentError:
        return AttachmentError(f"the attachment is larger than {limit} bytes", retryable=False)


async def fetch_voice_note(fetcher: AttachmentFetcher, attachment: Attachment) -> Download:
    """The voice note's bytes, or a ``TranscriptionError``: the pipeline tells a voice note it
    could not transcribe from a passing failure by that type and its retryable flag."""
    if not attachment.data_url:
        raise TranscriptionError("the voice note has no download URL", retryable=False)
    try:
        return await fetcher.fetch(attachment.data_url)
    except TranscriptionError:
        raise
    except AttachmentError as exc:
        raise TranscriptionError(
            str(exc), retryable=exc.retryable, retry_after=exc.retry_after
        ) from exc
