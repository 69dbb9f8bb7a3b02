"""``chatbuffer demo``: the real service against built-in simulators, narrated as a timeline.

It starts the webhook API and worker (SQLite in a temporary folder), a Chatwoot simulator that
delivers signed webhooks, and a scripted OpenAI-compatible model, all on 127.0.0.1. A contact sends
a burst of four messages; the timeline shows the buffer opening, extending, closing, and the one
reply Chatwoot receives.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import openai

from chatbuffer.ai.openai_model import OpenAIReplyModel
from chatbuffer.app import Runtime
from chatbuffer.domain.aggregation import ReadKind
from chatbuffer.domain.model import (
    Attachment,
    AttachmentContent,
    ConversationKey,
    InboundMessage,
    InlineImage,
)
from chatbuffer.domain.ports import EventName
from chatbuffer.intake.webhook import Buffer, IntakeRules, classify, parse
from chatbuffer.settings import Settings, load_settings
from chatbuffer.simulator import payloads
from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.media import png
from chatbuffer.simulator.model import ScriptedModelServer, voice_note
from chatbuffer.simulator.server import serve_in_background
from chatbuffer.storage import database
from chatbuffer.transcription.reading import image_type
from chatbuffer.worker.asking import Asker

ACCOUNT_ID = 1
CONVERSATION_ID = 1532
FIRST_MESSAGE_ID = 90_812
Kind = Literal["text", "image", "voice"]
# (seconds after the previous message, what the contact sends, as what)
BURST: list[tuple[float, str, Kind]] = [
    (0.0, "hi", "text"),
    (0.8, "I ordered this blue jacket last week", "image"),
    (1.1, "it still hasn't arrived, can you check?", "voice"),
    (0.7, "order 4411", "text"),
]
#: The photo the contact sends with the second message: a small blue PNG, made on the spot.
PHOTO = png(width=4, height=3, rgb=(30, 60, 200))
REPLY_GRACE_S = 15.0
NOTABLE = frozenset({"message_duplicate", "attempt_failed", "buffer_failed", "handoff", "no_reply"})


class Timeline:
    """Prints each event with the seconds since the demo started."""

    def __init__(self, started: float, window_s: float) -> None:
        self._started = started
        self._window_s = window_s

    def line(self, text: str) -> None:
        print(f"  +{time.monotonic() - self._started:6.2f}s  {text}", flush=True)

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None:  # noqa: ARG002
        due = fields.get("due_at")
        due_in = (
            f", closes in {(due - datetime.now(UTC)).total_seconds():.1f}s"
            if isinstance(due, datetime)
            else ""
        )
        if name == "buffer_opened":
            self.line(f"chatbuffer  message stored, new buffer opened (1 message{due_in})")
        elif name == "buffer_extended":
            count = fields["messages"]
            self.line(f"chatbuffer  message stored, buffer extended ({count} messages{due_in})")
        elif name == "buffer_closed":
            self.line(
                f"chatbuffer  buffer closed after {self._window_s:.1f}s of quiet: "
                f"{fields['messages']} messages, processing started "
                f"{fields['lateness_ms']:.0f} ms after the due time"
            )
        elif name == "reply_sent":
            self.line(
                f"chatbuffer  reply sent to Chatwoot (message {fields['chatwoot_message_id']}, "
                f"confidence {fields['confidence']:.2f})"
            )
        elif name in {
            "message_duplicate",
            "attempt_failed",
            "buffer_failed",
            "handoff",
            "no_reply",
        }:
            detail = fields.get("error") or fields.get("reason") or ""
            self.line(f"chatbuffer  {name.replace('_', ' ')} {detail}".rstrip())


def run(*, window_ms: int) -> int:
    with tempfile.TemporaryDirectory(prefix="chatbuffer-demo-") as folder:
        url = f"sqlite:///{Path(folder) / 'chatbuffer.db'}"
        database.migrate(url)
        return asyncio.run(_demo(url, window_ms))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _demo(database_url: str, window_ms: int) -> int:
    token, secret = secrets.token_hex(16), secrets.token_hex(16)
    service_port = _free_port()
    service_url = f"http://127.0.0.1:{service_port}"
    model = ScriptedModelServer()
    chatwoot = ChatwootSimulator(
        api_token=token,
        webhook_url=f"{service_url}/webhooks/chatwoot",
        webhook_secret=secret,
    )
    model_url, stop_model = await serve_in_background(model.app)
    chatwoot_url, stop_chatwoot = await serve_in_background(chatwoot.app)
    settings = load_settings(
        database_url=database_url,
        message_buffer_duration_ms=window_ms,
        max_buffer_age_ms=max(window_ms * 10, 300_000),
        openai_base_url=f"{model_url}/v1",
        openai_api_key="demo-key",
        openai_model="scripted-support-agent",
        chatwoot_base_url=chatwoot_url,
        chatwoot_api_token=token,
        chatwoot_webhook_secret=secret,
        chatwoot_account_id=ACCOUNT_ID,
    )
    started = time.monotonic()
    timeline = Timeline(started, window_ms / 1000)
    runtime = Runtime(settings, observers=[timeline])
    _, stop_service = await serve_in_background(runtime.asgi(with_worker=True), port=service_port)
    print(
        f"chatbuffer demo: service on {service_url}, Chatwoot simulator on {chatwoot_url}, "
        f"scripted model on {model_url}\nquiet period {window_ms / 1000:.1f}s "
        f"(production default 30s); SQLite database in a temporary folder\n"
    )
    try:
        for message_id, (gap, text, kind) in enumerate(BURST, start=FIRST_MESSAGE_ID):
            await asyncio.sleep(gap)
            if kind == "voice":
                timeline.line(f"contact     [voice note, Chatwoot has no transcript] {text!r}")
            elif kind == "image":
                timeline.line(f"contact     [photo] {text!r}")
            else:
                timeline.line(f"contact     {text!r}")
            body = _webhook(chatwoot, chatwoot_url, message_id, text, kind, datetime.now(UTC))
            delivery = await chatwoot.send_webhook(body)
            if delivery.status_code != 200:
                why = delivery.status_code or delivery.error
                print(f"chatbuffer demo: the service refused a webhook ({why})", file=sys.stderr)
                return 1
        replies = await _wait_for_reply(chatwoot, window_ms / 1000 + REPLY_GRACE_S)
        if not replies:
            print("chatbuffer demo: no reply arrived in time", file=sys.stderr)
            return 1
        await asyncio.sleep(0.3)  # let the typing-off call land before summarising
        typing = chatwoot.typing_events(ACCOUNT_ID, CONVERSATION_ID)
        request = model.requests[-1] if model.requests else {"messages": []}
        user = next((m["content"] for m in request["messages"] if m["role"] == "user"), "")
        text = user if isinstance(user, str) else str(user[0]["text"])
        images = sum(
            1 for part in (user if isinstance(user, list) else []) if part["type"] == "image_url"
        )
        seen = [line[2:] for line in text.splitlines() if line.startswith("- ")]
        print(
            f"\nChatwoot received {len(replies)} reply for {len(BURST)} messages "
            f"(typing: {' -> '.join(typing) or 'none'}); the voice note was transcribed "
            f"({len(model.transcriptions)} call); the model was asked once "
            f"({len(model.requests)} call), was shown {images} image as its bytes, and saw, "
            "in order:"
        )
        for line in seen[: len(BURST)]:
            print(f"    - {line}")
        print(f"\nThe reply:\n    {replies[0]['content']}\n")
        return 0 if len(replies) == 1 else 1
    finally:
        await stop_service()
        await stop_chatwoot()
        await stop_model()


def _webhook(
    chatwoot: ChatwootSimulator,
    chatwoot_url: str,
    message_id: int,
    text: str,
    kind: Kind,
    at: datetime,
) -> dict[str, Any]:
    """The webhook Chatwoot delivers for one message of the burst (its file stored first)."""
    common: dict[str, Any] = {
        "account_id": ACCOUNT_ID,
        "conversation_id": CONVERSATION_ID,
        "message_id": message_id,
        "created_at": at,
    }
    if kind == "voice":
        path = chatwoot.add_file(f"voice-{message_id}.ogg", voice_note(text))
        return payloads.incoming_attachment(
            **common, file_type="audio", data_url=f"{chatwoot_url}{path}"
        )
    if kind == "image":
        path = chatwoot.add_file("jacket.png", PHOTO, "image/png")
        return payloads.incoming_attachment(
            **common,
            file_type="image",
            data_url=f"{chatwoot_url}{path}",
            content=text,
            content_type="image/png",
            extension="png",
        )
    return payloads.incoming_text(**common, content=text)


async def _wait_for_reply(chatwoot: ChatwootSimulator, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = chatwoot.replies(ACCOUNT_ID, CONVERSATION_ID)
        if replies:
            return replies
        await asyncio.sleep(0.05)
    return []


#: Where the example pretends Chatwoot is (its links must never reach the model).
EXAMPLE_CHATWOOT = "https://chatwoot.example.com"
EXAMPLE_START = datetime(2026, 3, 2, 14, 5, 0, tzinfo=UTC)


async def example_request() -> dict[str, Any]:
    """The exact request body the service sends the model for the demo's burst, with the
    demo's timing and the default settings (docs/configuration.md shows it, and
    tests/unit/test_docs_example.py keeps the two equal).

    The webhooks go through the service's own parsing, the burst through the worker's ``Asker``
    (the image read as the reader hands it over, the voice note as its stored transcript) and
    the request through ``OpenAIReplyModel.request``: the path of a real reply without the
    network and the database.
    """
    defaults = Settings.model_construct()
    chatwoot = ChatwootSimulator(api_token=secrets.token_hex(8))
    messages: list[InboundMessage] = []
    at = EXAMPLE_START
    for message_id, (gap, text, kind) in enumerate(BURST, start=FIRST_MESSAGE_ID):
        at += timedelta(seconds=gap)
        body = _webhook(chatwoot, EXAMPLE_CHATWOOT, message_id, text, kind, at)
        action = classify(parse(body), IntakeRules(active_statuses=frozenset({"pending"})), at)
        assert isinstance(action, Buffer)
        message = action.message
        if kind == "voice":
            # Transcribed by the worker before the prompt is made, and stored.
            heard = tuple(replace(a, transcript=text) for a in message.attachments)
            message = replace(message, attachments=heard)
        messages.append(message)

    class _Photo:
        async def read(self, attachment: Attachment, kind: ReadKind) -> AttachmentContent:
            assert (attachment.file_type, kind) == ("image", "image")
            return AttachmentContent(image=InlineImage(image_type(PHOTO) or "", PHOTO))

    client = openai.AsyncOpenAI(api_key="unused", base_url="http://127.0.0.1:1/v1")
    model = OpenAIReplyModel(
        model=defaults.openai_model,
        client=client,
        temperature=defaults.ai_temperature,
        max_tokens=defaults.ai_max_tokens,
    )
    try:
        asker = Asker(model=model, reader=_Photo(), vision=defaults.ai_vision_enabled)
        inputs = await asker.inputs(messages, [], include_history=True)
        return model.request(asker.prompt(inputs))
    finally:
        await model.aclose()
