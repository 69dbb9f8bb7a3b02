"""The transcriber adapter against mocked Chatwoot storage and OpenAI endpoints: the text, and
how failures are classified (retry when, give up when), Retry-After included."""

from __future__ import annotations

import httpx2
import openai
import pytest

from chatbuffer.domain.model import Attachment
from chatbuffer.errors import TranscriptionError
from chatbuffer.transcription.fetch import AttachmentFetcher
from chatbuffer.transcription.openai_transcriber import OpenAITranscriber

CHATWOOT = "https://chatwoot.example.com"
VOICE = Attachment(
    file_type="audio", data_url=f"{CHATWOOT}/rails/active_storage/blobs/redirect/t/v.ogg"
)


def transcriber(endpoint, storage=None) -> OpenAITranscriber:
    def chatwoot(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"Content-Type": "audio/ogg"}, content=b"OggS....")

    client = openai.AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(endpoint)),
    )
    fetcher = AttachmentFetcher(
        chatwoot_base_url=CHATWOOT,
        max_bytes=10_000,
        timeout_s=5,
        transport=httpx2.MockTransport(storage or chatwoot),
    )
    return OpenAITranscriber(client=client, model="whisper-1", fetcher=fetcher)


async def test_the_voice_note_becomes_text() -> None:
    seen: list[httpx2.Request] = []

    def endpoint(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, text="  where is my order  ")

    assert await transcriber(endpoint).transcribe(VOICE) == "where is my order"
    [request] = seen
    assert request.url.path == "/v1/audio/transcriptions"
    assert b"whisper-1" in request.read() and b"OggS" in request.read()


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        (429, {"Retry-After": "9"}, True, 9.0),
        (503, {}, True, None),
        (400, {}, False, None),
        (413, {}, False, None),
    ],
)
async def test_endpoint_failures_are_classified(
    status: int, headers: dict[str, str], retryable: bool, retry_after: float | None
) -> None:
    def endpoint(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers=headers, json={"error": {"message": "no"}})

    with pytest.raises(TranscriptionError, match=f"answered {status}") as caught:
        await transcriber(endpoint).transcribe(VOICE)
    assert (caught.value.retryable, caught.value.retry_after) == (retryable, retry_after)
    # Only the endpoint's own 429 pauses the worker's model calls (see worker/model_gate.py).
    assert caught.value.rate_limited == (status == 429)


async def test_a_download_told_to_wait_passes_the_wait_on() -> None:
    def storage(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, headers={"Retry-After": "4"})

    def endpoint(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("nothing to transcribe without the audio")

    with pytest.raises(TranscriptionError, match="download answered 429") as caught:
        await transcriber(endpoint, storage).transcribe(VOICE)
    assert (caught.value.retryable, caught.value.retry_after) == (True, 4.0)
    # Chatwoot's storage asking to wait says nothing about the model endpoint's limits.
    assert not caught.value.rate_limited


async def test_a_voice_note_without_a_url_is_given_up_on() -> None:
    def endpoint(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("not called")

    with pytest.raises(TranscriptionError) as caught:
        await transcriber(endpoint).transcribe(Attachment(file_type="audio", data_url=None))
    assert not caught.value.retryable
