"""``OpenAITranscriber``: Whisper-style transcription through the official ``openai`` SDK."""

from __future__ import annotations

import openai

from chatbuffer.domain.model import Attachment
from chatbuffer.errors import TranscriptionError
from chatbuffer.openai_errors import translated
from chatbuffer.transcription.fetch import AttachmentFetcher, fetch_voice_note


class OpenAITranscriber:
    """Implements :class:`chatbuffer.domain.ports.Transcriber` with ``audio.transcriptions``.

    Works with any endpoint that speaks OpenAI's transcription API (OpenAI, Groq, a local
    faster-whisper server), the chat endpoint or one of its own (``TRANSCRIPTION_BASE_URL``).
    """

    def __init__(
        self, *, client: openai.AsyncOpenAI, model: str, fetcher: AttachmentFetcher
    ) -> None:
        self._client = client
        self._model = model
        self._fetcher = fetcher

    async def aclose(self) -> None:
        """Close the client; only for a client made for this transcriber alone."""
        await self._client.close()

    async def transcribe(self, attachment: Attachment) -> str:
        download = await fetch_voice_note(self._fetcher, attachment)
        with translated(TranscriptionError, "transcription endpoint"):
            result = await self._client.audio.transcriptions.create(
                model=self._model,
                file=(download.filename, download.content, download.content_type or "audio/ogg"),
                response_format="text",
            )
        text = result if isinstance(result, str) else getattr(result, "text", "")
        return str(text).strip()
