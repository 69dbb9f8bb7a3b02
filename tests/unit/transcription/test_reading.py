"""Reading a burst's images and files for the model: real PNG and PDF bytes, made here."""

from __future__ import annotations

import base64

import httpx2
import pytest

from chatbuffer.domain.model import Attachment
from chatbuffer.errors import AttachmentError
from chatbuffer.simulator.media import pdf, png
from chatbuffer.transcription.fetch import AttachmentFetcher
from chatbuffer.transcription.reading import ChatwootAttachmentReader, image_type, pdf_text

CHATWOOT = "https://chatwoot.example.com"


def reader(files: dict[str, tuple[int, bytes]], *, image_max: int = 10_000, chars: int = 500):
    def serve(request: httpx2.Request) -> httpx2.Response:
        status, body = files.get(request.url.path, (404, b""))
        return httpx2.Response(status, content=body)

    fetcher = AttachmentFetcher(
        chatwoot_base_url=CHATWOOT,
        max_bytes=100_000,
        timeout_s=5,
        transport=httpx2.MockTransport(serve),
    )
    return ChatwootAttachmentReader(
        fetcher=fetcher, image_max_bytes=image_max, text_max_chars=chars
    )


async def test_an_image_comes_back_as_its_bytes_with_the_type_its_bytes_say() -> None:
    photo = png(3, 2)
    content = await reader({"/p.jpg": (200, photo)}).read(
        Attachment("image", f"{CHATWOOT}/p.jpg", content_type="image/jpeg"), "image"
    )
    assert content.image is not None and content.problem is None
    assert content.image.media_type == "image/png"  # the payload said JPEG; the bytes are PNG
    assert content.image.data_url == "data:image/png;base64," + base64.b64encode(photo).decode()


@pytest.mark.parametrize(
    ("files", "url", "problem"),
    [
        (
            {"/big.png": (200, png(200, 200, (1, 2, 3)) + b"\0" * 20_000)},
            "/big.png",
            "it is larger than 10000 bytes",
        ),
        (
            {"/x.png": (200, b"<html>not an image</html>")},
            "/x.png",
            "it is not in an image format the model reads",
        ),
        (
            {"/gone.png": (403, b"")},
            "/gone.png",
            "it could not be downloaded (download answered 403)",
        ),
    ],
)
async def test_an_image_that_cannot_be_shown_says_why(files, url, problem) -> None:
    content = await reader(files).read(Attachment("image", f"{CHATWOOT}{url}"), "image")
    assert content.image is None
    assert content.problem == problem


async def test_an_image_elsewhere_than_chatwoot_is_never_fetched() -> None:
    content = await reader({}).read(Attachment("image", "http://169.254.169.254/x.png"), "image")
    assert content.problem == "it is not on the Chatwoot host; it was not downloaded"


async def test_a_passing_failure_is_raised_for_a_retry() -> None:
    with pytest.raises(AttachmentError) as caught:
        await reader({"/p.png": (503, b"")}).read(Attachment("image", f"{CHATWOOT}/p.png"), "image")
    assert caught.value.retryable


async def test_a_pdfs_text_is_extracted_page_by_page_and_capped() -> None:
    document = pdf("Invoice 7731\nTotal due: 42.00 (EUR)", "Pay by 31 May")
    content = await reader({"/i.pdf": (200, document)}).read(
        Attachment("file", f"{CHATWOOT}/i.pdf", content_type="application/pdf"), "text"
    )
    assert content.text == "Invoice 7731\nTotal due: 42.00 (EUR)\n\nPay by 31 May"
    assert (content.pages, content.truncated) == (2, False)
    capped = pdf_text(document, 20)
    assert (capped.text, capped.truncated) == ("Invoice 7731\nTotal d", True)


async def test_plain_text_files_are_read_and_broken_pdfs_reported() -> None:
    files = {"/n.txt": (200, "café\nopen 9-18".encode()), "/b.pdf": (200, b"%PDF-1.4 broken")}
    text = await reader(files).read(Attachment("file", f"{CHATWOOT}/n.txt"), "text")
    assert text.text == "café\nopen 9-18"
    broken = await reader(files).read(Attachment("file", f"{CHATWOOT}/b.pdf"), "text")
    assert (broken.text, broken.problem) == (None, "the PDF could not be read")


def test_image_types_are_known_by_their_signatures() -> None:
    assert image_type(png()) == "image/png"
    assert image_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert image_type(b"GIF89a...") == "image/gif"
    assert image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_type(b"%PDF-1.4") is None
