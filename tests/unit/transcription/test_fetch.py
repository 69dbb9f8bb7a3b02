"""Attachment downloads: only from Chatwoot, capped, never with the API token."""

from __future__ import annotations

import httpx2
import pytest

from chatbuffer.errors import AttachmentError
from chatbuffer.transcription.fetch import AttachmentFetcher

CHATWOOT = "https://chatwoot.example.com"
AUDIO = b"OggS" + b"\x00" * 2000


class Storage:
    """A Chatwoot that redirects ActiveStorage URLs to a storage host, recording every request."""

    def __init__(self, body: bytes = AUDIO, *, status: int = 200, declare: bool = True) -> None:
        self.body = body
        self.status = status
        self.declare = declare
        self.seen: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        if request.url.host == "chatwoot.example.com":
            return httpx2.Response(
                302, headers={"Location": "https://bucket.storage.example/voice.ogg?sig=abc"}
            )
        headers = {"Content-Type": "audio/ogg"}
        if not self.declare:
            return httpx2.Response(
                self.status, headers=headers, stream=httpx2.ByteStream(self.body)
            )
        return httpx2.Response(self.status, headers=headers, content=self.body)


def fetcher(storage: Storage, max_bytes: int = 10_000) -> AttachmentFetcher:
    return AttachmentFetcher(
        chatwoot_base_url=CHATWOOT,
        max_bytes=max_bytes,
        timeout_s=5,
        transport=httpx2.MockTransport(storage),
    )


async def test_follows_chatwoots_redirect_to_its_storage() -> None:
    storage = Storage()
    download = await fetcher(storage).fetch(
        f"{CHATWOOT}/rails/active_storage/blobs/redirect/x/a.ogg"
    )
    assert download.content == AUDIO
    assert download.filename == "voice.ogg"
    assert download.content_type == "audio/ogg"
    assert [r.url.host for r in storage.seen] == ["chatwoot.example.com", "bucket.storage.example"]
    assert all("api_access_token" not in r.headers for r in storage.seen)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:5432/",
        "https://chatwoot.example.com.evil.test/a.ogg",
        "http://chatwoot.example.com/a.ogg",  # same host, other scheme and port
        "https://chatwoot.example.com:8443/a.ogg",
        "file:///etc/passwd",
        "not a url",
    ],
)
async def test_urls_off_the_chatwoot_origin_are_never_requested(url: str) -> None:
    storage = Storage()
    with pytest.raises(AttachmentError, match="not on the Chatwoot host") as caught:
        await fetcher(storage).fetch(url)
    assert not caught.value.retryable
    assert storage.seen == []


@pytest.mark.parametrize("declare", [True, False])
async def test_too_large_is_refused_for_good(declare: bool) -> None:
    storage = Storage(body=b"x" * 20_000, declare=declare)
    with pytest.raises(AttachmentError, match="larger than 10000 bytes") as caught:
        await fetcher(storage).fetch(f"{CHATWOOT}/rails/a.ogg")
    assert not caught.value.retryable


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (404, True), (403, False)])
async def test_error_statuses(status: int, retryable: bool) -> None:
    with pytest.raises(AttachmentError, match=f"answered {status}") as caught:
        await fetcher(Storage(status=status)).fetch(f"{CHATWOOT}/rails/a.ogg")
    assert caught.value.retryable is retryable


async def test_network_failure_is_retryable() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    broken = AttachmentFetcher(
        chatwoot_base_url=CHATWOOT,
        max_bytes=10,
        timeout_s=1,
        transport=httpx2.MockTransport(refuse),
    )
    with pytest.raises(AttachmentError, match="ConnectError") as caught:
        await broken.fetch(f"{CHATWOOT}/rails/a.ogg")
    assert caught.value.retryable
