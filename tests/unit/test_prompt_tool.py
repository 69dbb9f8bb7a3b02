"""`chatbuffer prompt`'s output: images shortened for reading, old and new answers side by side."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

from chatbuffer.domain.model import Assessment, ConversationKey
from chatbuffer.domain.ports import PostedMessage, StoredBurst
from chatbuffer.prompt_tool import Trial, _shorten_images, side_by_side

IMAGE = bytes(range(256)) * 3


def test_short_images_name_the_type_and_size_and_leave_the_rest() -> None:
    url = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    request: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]},
        ],
    }
    short = _shorten_images(request)
    assert short["messages"][1]["content"][0]["image_url"]["url"] == (
        f"data:image/png;base64,…({len(IMAGE)} bytes)"
    )
    assert short["messages"][0] == request["messages"][0]
    assert request["messages"][1]["content"][0]["image_url"]["url"] == url  # a copy


def test_old_and_new_answers_stand_side_by_side_under_the_burst() -> None:
    burst = StoredBurst(
        buffer_id=uuid.UUID(int=7),
        key=ConversationKey(1, 1532),
        status="completed",
        messages=[],
        history=[],
        answer=PostedMessage("reply", "Hi! I'm checking order #4411 for you now.", 10_001),
        last_message_at=datetime(2026, 3, 2, 14, 5, 2, tzinfo=UTC),
    )
    trial = Trial(burst, ["hi", "order 4411"], "new: reply (confidence 0.92)", "Hello!", False)
    text = side_by_side([trial], width=63)
    assert (
        text.splitlines()
        == [
            "== buffer 00000000-0000-0000-0000-000000000007 · conversation 1/1532 · 0 messages"
            " · last 2026-03-02T14:05:02+00:00 · completed",
            "   - hi",
            "   - order 4411",
            "old: reply (sent)              | new: reply (confidence 0.92)",
            "-----------------              | ----------------------------",
            "Hi! I'm checking order #4411   | Hello!",
            "for you now.                   |",
            "",
        ][:-1]
    )
    silent = StoredBurst(**{**burst.__dict__, "answer": None}) if False else None
    assert silent is None
    assert side_by_side([]) == "no stored bursts yet\n"


def test_the_old_answer_shows_what_the_model_said_of_the_burst() -> None:
    burst = StoredBurst(
        buffer_id=uuid.UUID(int=8),
        key=ConversationKey(1, 1533),
        status="completed",
        messages=[],
        history=[],
        answer=PostedMessage("reply", "On its way.", 10_002),
        last_message_at=datetime(2026, 3, 2, 14, 5, 2, tzinfo=UTC),
        assessment=Assessment(
            urgency=7,
            intent="order_status",
            actions=("track_parcel",),
            confidence=0.9,
            should_respond=True,
        ),
    )
    text = side_by_side([Trial(burst, ["where?"], "new: reply", "Soon.", False)], width=200)
    left = [line.split(" |")[0].strip() for line in text.splitlines()[2:]]
    assert left == [
        "old: reply (sent)",
        "-----------------",
        "On its way.",
        "",
        "(urgency 7, intent order_status, confidence 0.90, actions track_parcel)",
    ]
