"""``OpenAITranscriber``: Whisper-style transcription through the official ``openai`` SDK."""

from __future__ import annotations

import openai

from chatbuffer.domain.model import Attachment
from chatbuffer.errors import AttachmentError, TranscriptionError
from chatbuffer.openai_errors import translated
from chatbuffer.transcription.fetch import AttachmentFetcher


class OpenAITranscriber:
    """Implements :class:`chatbuffer.domain.ports.Transcriber` with ``audio.transcriptions``.

    Works with any endpoint that speaks OpenAI's transcription API (OpenAI, Groq, a local
    faster-whisper server).
    """

    def __init__(
        self, *, client: openai.AsyncOpenAI, model: str, fetcher: AttachmentFetcher
    ) -> None:
        self._client = client
        self._model = model
        self._fetcher = fetcher

    async def transcribe(self, attachment: Attachment) -> str:
        if not attachment.data_url:
            raise TranscriptionError("the voice note has no download URL", retryable=False)
        try:
            download = await self._fetcher.fetch(attachment.data_url)
        except TranscriptionError:
            raise
        except AttachmentError as exc:
            # The pipeline tells a voice note it could not transcribe from a passing failure by
            # this type and its retryable flag.
            raise TranscriptionError(
                str(exc), retryable=exc.retryable, retry_after=exc.retry_after
            ) from exc
        with translated(TranscriptionError, "transcription endpoint"):
            result = await self._client.audio.transcriptions.create(
                model=self._model,
                file=(download.filename, download.content, download.content_type or "audio/ogg"),
                response_format="text",
            )
        text = result if isinstance(result, str) else getattr(result, "text", "")
        return str(text).strip()
