"""The local transcriber around its engine (a fake here; the real one is in test_local_asr.py):
what it downloads, one note at a time, how failures reach the pipeline, and the start-up check
that stops a ``local`` backend without the extra."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx2
import pytest

from chatbuffer.domain.model import Attachment
from chatbuffer.errors import ConfigurationError, TranscriptionError
from chatbuffer.transcription import local_transcriber, packaged_model
from chatbuffer.transcription.fetch import AttachmentFetcher
from chatbuffer.transcription.local_transcriber import LocalTranscriber, check_available

CHATWOOT = "https://chatwoot.example.com"


def note(name: str) -> Attachment:
    return Attachment(file_type="audio", data_url=f"{CHATWOOT}/rails/active_storage/{name}")


def fetcher(status: int = 200) -> AttachmentFetcher:
    def storage(request: httpx2.Request) -> httpx2.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        return httpx2.Response(status, content=f"OggS {name}".encode())

    return AttachmentFetcher(
        chatwoot_base_url=CHATWOOT,
        max_bytes=10_000,
        timeout_s=5,
        transport=httpx2.MockTransport(storage),
    )


async def test_the_downloaded_note_is_transcribed_off_the_event_loop() -> None:
    threads: list[threading.Thread] = []

    def engine(data: bytes) -> str:
        threads.append(threading.current_thread())
        return f"heard {data.decode()}"

    transcriber = LocalTranscriber(fetcher=fetcher(), engine=engine)

    assert await transcriber.transcribe(note("a.ogg")) == "heard OggS a.ogg"
    assert threads != [threading.main_thread()]


async def test_two_notes_at_once_are_transcribed_one_after_the_other() -> None:
    running = 0
    most = 0
    guard = threading.Lock()

    def engine(data: bytes) -> str:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # CPU work stands here
        with guard:
            running -= 1
        return data.decode()

    transcriber = LocalTranscriber(fetcher=fetcher(), engine=engine)

    texts = await asyncio.gather(*(transcriber.transcribe(note(f"{i}.ogg")) for i in range(3)))

    assert texts == ["OggS 0.ogg", "OggS 1.ogg", "OggS 2.ogg"]
    assert most == 1


async def test_a_note_the_engine_cannot_read_is_given_up_on() -> None:
    def engine(data: bytes) -> str:
        raise ValueError("not audio")

    with pytest.raises(TranscriptionError, match="could not be transcribed") as caught:
        await LocalTranscriber(fetcher=fetcher(), engine=engine).transcribe(note("x.ogg"))
    assert not caught.value.retryable


async def test_a_download_failure_is_a_transcription_failure_with_its_retry_flag() -> None:
    def engine(data: bytes) -> str:
        raise AssertionError("nothing to transcribe without the audio")

    with pytest.raises(TranscriptionError, match="answered 503") as caught:
        await LocalTranscriber(fetcher=fetcher(503), engine=engine).transcribe(note("x.ogg"))
    assert caught.value.retryable

    with pytest.raises(TranscriptionError) as refused:
        await LocalTranscriber(fetcher=fetcher(), engine=engine).transcribe(
            Attachment(file_type="audio", data_url="https://elsewhere.example.com/x.ogg")
        )
    assert not refused.value.retryable


def test_without_the_extra_start_up_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local_transcriber, "EXTRA_MODULES", ("chatbuffer_absent_asr",))
    monkeypatch.setattr(packaged_model, "PACKAGES", ("chatbuffer_absent_weights",))

    with pytest.raises(ConfigurationError) as caught:
        check_available(model_dir=None, cache_root=tmp_path)

    message = str(caught.value)
    assert message.startswith("TRANSCRIPTION_BACKEND=local needs chatbuffer_absent_asr")
    assert "the Whisper model packages" in message
    assert "chatbuffer[local-asr]" in message and "uv sync --extra local-asr" in message
    assert "\n" not in message


def test_a_model_directory_of_ones_own_must_hold_a_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local_transcriber, "EXTRA_MODULES", ())

    with pytest.raises(ConfigurationError, match="TRANSCRIPTION_MODEL is invalid"):
        check_available(model_dir=tmp_path, cache_root=tmp_path)

    (tmp_path / "model.bin").write_bytes(b"weights")
    check_available(model_dir=tmp_path, cache_root=tmp_path / "unused")
