"""``ChatwootAttachmentReader``: a burst's images and files, read for the model.

Images are downloaded (only from Chatwoot, through ``AttachmentFetcher``, at most
``AI_IMAGE_MAX_BYTES``) and handed over as bytes, which the model request carries in a ``data:``
URL: the signed Chatwoot link never reaches the model provider, and the provider needs no access
to Chatwoot. The format is read from the bytes themselves (PNG, JPEG, GIF or WebP, what
OpenAI-compatible vision models take), not from what the payload claims.

Files: a PDF's text (pypdf) or a plain-text file's, cut at ``FILE_TEXT_MAX_CHARS``. Parsing a
PDF is CPU work, so it runs in a thread, and stops at ``MAX_PDF_PAGES`` pages.
"""

from __future__ import annotations

import asyncio
import io
import logging

from pypdf import PdfReader

from chatbuffer.domain.aggregation import ReadKind, is_pdf
from chatbuffer.domain.model import Attachment, AttachmentContent, InlineImage
from chatbuffer.errors import AttachmentError
from chatbuffer.transcription.fetch import AttachmentFetcher

logger = logging.getLogger(__name__)

MAX_PDF_PAGES = 200

_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def image_type(data: bytes) -> str | None:
    """The image format the bytes are in, if the model can take it."""
    for signature, media_type in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class ChatwootAttachmentReader:
    """Implements :class:`chatbuffer.domain.ports.AttachmentReader`."""

    def __init__(
        self, *, fetcher: AttachmentFetcher, image_max_bytes: int, text_max_chars: int
    ) -> None:
        self._fetcher = fetcher
        self._image_max_bytes = image_max_bytes
        self._text_max_chars = text_max_chars

    async def read(self, attachment: Attachment, kind: ReadKind) -> AttachmentContent:
        if not attachment.data_url:
            return AttachmentContent(problem="it has no download link")
        limit = self._image_max_bytes if kind == "image" else None
        try:
            download = await self._fetcher.fetch(attachment.data_url, max_bytes=limit)
        except AttachmentError as exc:
            if exc.retryable:
                raise
            return AttachmentContent(problem=_reason(exc))
        if kind == "image":
            media_type = image_type(download.content)
            if media_type is None:
                return AttachmentContent(problem="it is not in an image format the model reads")
            return AttachmentContent(image=InlineImage(media_type, download.content))
        if download.content.startswith(b"%PDF"):
            return await asyncio.to_thread(pdf_text, download.content, self._text_max_chars)
        if is_pdf(attachment):
            return AttachmentContent(problem="it is not a PDF")
        return plain_text(download.content, self._text_max_chars)


def _reason(exc: AttachmentError) -> str:
    """The fetcher's error as the prompt says it: "it is larger than N bytes", "it is not on the
    Chatwoot host…", "it could not be downloaded (download answered 403)"."""
    text = str(exc)
    if text.startswith("the attachment is "):
        return "it is " + text.removeprefix("the attachment is ")
    return f"it could not be downloaded ({text.removeprefix('the attachment ')})"


def plain_text(data: bytes, max_chars: int) -> AttachmentContent:
    text = data.decode("utf-8", errors="replace").replace("\x00", "")
    return _capped(text, max_chars, pages=None)


def pdf_text(data: bytes, max_chars: int) -> AttachmentContent:
    """The text of a PDF's pages, in order, until ``max_chars``; a PDF pypdf cannot read (broken,
    encrypted) is reported, not raised."""
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            return AttachmentContent(problem="the PDF is password-protected")
        pages = len(reader.pages)
        texts: list[str] = []
        size = 0
        for page in reader.pages[:MAX_PDF_PAGES]:
            text = (page.extract_text() or "").strip()
            texts.append(text)
            size += len(text) + 2
            if size > max_chars:
                break
    except Exception as exc:  # a parser on a stranger's file may fail in any way
        logger.info("a PDF could not be read: %s", type(exc).__name__)
        return AttachmentContent(problem="the PDF could not be read")
    text = "\n\n".join(t for t in texts if t).replace("\x00", "")
    if not text:
        return AttachmentContent(pages=pages, problem="the PDF has no text (a scan?)")
    content = _capped(text, max_chars, pages=pages)
    if pages > MAX_PDF_PAGES and not content.truncated:
        return AttachmentContent(text=content.text, truncated=True, pages=pages)
    return content


def _capped(text: str, max_chars: int, *, pages: int | None) -> AttachmentContent:
    text = text.strip()
    if len(text) <= max_chars:
        return AttachmentContent(text=text, pages=pages)
    return AttachmentContent(text=text[:max_chars].rstrip(), truncated=True, pages=pages)
