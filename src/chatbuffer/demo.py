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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chatbuffer.app import Runtime
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import EventName
from chatbuffer.settings import load_settings
from chatbuffer.simulator import payloads
from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.model import ScriptedModelServer, voice_note
from chatbuffer.simulator.server import serve_in_background
from chatbuffer.storage import database

ACCOUNT_ID = 1
CONVERSATION_ID = 1532
# (seconds after the previous message, what the contact sends, whether it is a voice note)
BURST = [
    (0.0, "hi", False),
    (0.8, "I ordered a blue jacket last week", False),
    (1.1, "it still hasn't arrived, can you check?", True),
    (0.7, "order 4411", False),
]
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
        for message_id, (gap, text, spoken) in enumerate(BURST, start=90_812):
            await asyncio.sleep(gap)
            common: dict[str, Any] = {
                "account_id": ACCOUNT_ID,
                "conversation_id": CONVERSATION_ID,
                "message_id": message_id,
                "created_at": datetime.now(UTC),
            }
            if spoken:
                timeline.line(f"contact     [voice note, Chatwoot has no transcript] {text!r}")
                path = chatwoot.add_file(f"voice-{message_id}.ogg", voice_note(text))
                body = payloads.incoming_attachment(
                    **common, file_type="audio", data_url=f"{chatwoot_url}{path}"
                )
            else:
                timeline.line(f"contact     {text!r}")
                body = payloads.incoming_text(**common, content=text)
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
        prompt = model.requests[-1]["messages"][-1]["content"] if model.requests else ""
        seen = [line[2:] for line in str(prompt).splitlines() if line.startswith("- ")]
        print(
            f"\nChatwoot received {len(replies)} reply for {len(BURST)} messages "
            f"(typing: {' -> '.join(typing) or 'none'}); the voice note was transcribed "
            f"({len(model.transcriptions)} call); the model was asked once "
            f"({len(model.requests)} call) and saw, in order:"
        )
        for line in seen[: len(BURST)]:
            print(f"    - {line}")
        print(f"\nThe reply:\n    {replies[0]['content']}\n")
        return 0 if len(replies) == 1 else 1
    finally:
        await stop_service()
        await stop_chatwoot()
        await stop_model()


async def _wait_for_reply(chatwoot: ChatwootSimulator, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = chatwoot.replies(ACCOUNT_ID, CONVERSATION_ID)
        if replies:
            return replies
        await asyncio.sleep(0.05)
    return []
