"""Replies that read well on WhatsApp, through the real service: a model answer longer than
WhatsApp takes arrives as ordered parts, each exactly once, even when the process dies between
two of them; Markdown becomes WhatsApp's formatting only in the inbox whose flag says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from chatbuffer.domain.marker import read
from chatbuffer.storage import database
from chatbuffer.storage.tables import message_buffer
from tests.e2e.conftest import REPLY_BOUND_S, Service, free_port, simulators

pytestmark = pytest.mark.e2e

SENTENCE = "Your parcel left our warehouse and the courier scans it at every stop on the way."
#: About 9,000 characters in paragraphs of ten sentences.
LONG = "\n\n".join(" ".join([SENTENCE] * 10) for _ in range(11))
MARKDOWN = "## Your order\n\n**Shipped** today, *tracking* soon:\n\n* box one\n* box two"


def answers(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The scripted model: the long answer to "long", Markdown to anything else."""
    burst = str(messages[-1]["content"])
    return {
        "shouldRespond": True,
        "content": LONG if "the long story" in burst else MARKDOWN,
        "confidence": 0.9,
        "intent": "order_status",
        "actions": ["track_parcel"],
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatbuffer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assessments(db_url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(database.sync_url(db_url))
    try:
        with engine.connect() as conn:
            columns = message_buffer.c
            query = select(
                columns.conversation_id,
                columns.urgency,
                columns.model_intent,
                columns.model_actions,
                columns.model_should_respond,
            ).order_by(columns.conversation_id)
            return [tuple(r) for r in conn.execute(query)]
    finally:
        engine.dispose()


async def test_long_answers_arrive_in_parts_once_and_markdown_is_formatted_where_flagged(
    db_url: str, tmp_path: Path
) -> None:
    """One service for both (a start costs seconds): first the flag, then a process death."""
    assert len(LONG) > 9_000
    port = free_port()
    async with simulators(port, model_script=answers) as sims:
        env = sims.service_env(
            db_url,
            WORKER_LEASE_MS="1000",
            CHATWOOT_TIMEOUT_MS="1000",
            REPLY_PAUSE_MS_PER_CHAR="1",
            REPLY_PAUSE_MAX_MS="1000",
        )
        flagged = cli(env, "flags", "set", "response_quality_enhancement", "on", "--inbox", "7")
        assert flagged.returncode == 0, flagged.stderr
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        try:
            await world.say(71, "where is my order? URGENT!!", inbox_id=7)
            await world.say(72, "where is my order?", inbox_id=8)
            [formatted] = await world.wait_for_replies(71, 1, REPLY_BOUND_S)
            [plain] = await world.wait_for_replies(72, 1, REPLY_BOUND_S)

            await world.say(61, "tell me the long story of my parcel")
            assert await world.wait_for(lambda: len(world.replies(61)) >= 1, REPLY_BOUND_S + 2)
            # Dies during the typing pause before the second part; comes back at once.
            service.kill()
            assert len(world.replies(61)) == 1
            await service.start()
            assert await world.wait_for(lambda: len(world.replies(61)) >= 3, 15)
            await world.wait_for(lambda: False, 1.5)  # nothing more arrives
            replies = world.replies(61)
        finally:
            await service.stop()

    assert formatted["content"] == (
        "*Your order*\n\n*Shipped* today, _tracking_ soon:\n\n- box one\n- box two"
    )
    assert plain["content"] == MARKDOWN
    # What the model said, and how urgent the burst read, are kept with each buffer.
    assert assessments(db_url)[1:] == [
        (71, 6, "order_status", ["track_parcel"], True),
        (72, 1, "order_status", ["track_parcel"], True),
    ]

    markers = [read(r["content_attributes"], private=False) for r in replies]
    assert [m.part for m in markers if m is not None] == [0, 1, 2]
    assert len({m.buffer_id for m in markers if m is not None}) == 1
    assert all(len(r["content"]) <= 4096 for r in replies)
    assert "\n\n".join(r["content"] for r in replies) == LONG
    # The model was asked once: the process that came back only finished the sending.
    assert sum("the long story" in str(r) for r in sims.model.requests) == 1
