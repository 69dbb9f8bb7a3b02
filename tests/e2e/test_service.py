"""The whole product: signed webhooks in, exactly the right Chatwoot calls out."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from chatbuffer.simulator import payloads
from chatbuffer.simulator.model import voice_note
from tests.e2e.conftest import ACCOUNT, REPLY_BOUND_S, WINDOW_MS, World

# The buffering core: also run on SQLite, the embedded default (see tests/e2e/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.both_databases]

QUIET_CHECK_S = WINDOW_MS / 1000 + 1.5


async def test_three_quick_messages_get_exactly_one_reply(world: World) -> None:
    for text in ["hi", "I ordered last week", "order 4411 hasn't arrived"]:
        await world.say(10, text)
        await asyncio.sleep(0.2)
    last_sent = time.monotonic()
    replies = await world.wait_for_replies(10, 1, REPLY_BOUND_S)
    assert time.monotonic() - last_sent <= REPLY_BOUND_S
    await asyncio.sleep(0.5)  # anything extra would show up now
    replies = world.replies(10)
    assert len(replies) == 1
    [prompt] = world.prompts()
    assert world.burst_lines(prompt) == ["hi", "I ordered last week", "order 4411 hasn't arrived"]
    assert "#4411" in replies[0]["content"]
    assert replies[0]["content_attributes"]["chatbuffer"]["buffer_id"]
    assert world.chatwoot.typing_events(ACCOUNT, 10) == ["on", "off"]


async def test_two_conversations_stay_apart(world: World) -> None:
    await world.say(21, "first conversation, order 1111")
    await world.say(22, "second conversation, order 2222")
    await world.say(21, "more for the first")
    await world.say(22, "more for the second")
    a = await world.wait_for_replies(21, 1, REPLY_BOUND_S)
    b = await world.wait_for_replies(22, 1, REPLY_BOUND_S)
    assert len(a) == 1 and len(b) == 1
    assert "#1111" in a[0]["content"] and "#2222" not in a[0]["content"]
    assert "#2222" in b[0]["content"] and "#1111" not in b[0]["content"]
    bursts = sorted(world.burst_lines(p) for p in world.prompts())
    assert bursts == [
        ["first conversation, order 1111", "more for the first"],
        ["second conversation, order 2222", "more for the second"],
    ]


async def test_a_redelivered_message_is_used_once(world: World) -> None:
    first = await world.say(30, "where is my parcel?")
    await world.say(30, "where is my parcel?", message_id=first)
    await world.say(30, "tracking says delivered")
    await world.say(30, "where is my parcel?", message_id=first)
    replies = await world.wait_for_replies(30, 1, REPLY_BOUND_S)
    await asyncio.sleep(0.5)
    assert len(world.replies(30)) == len(replies) == 1
    [prompt] = world.prompts()
    assert world.burst_lines(prompt) == ["where is my parcel?", "tracking says delivered"]


async def test_notes_outgoing_messages_own_replies_and_resolved_conversations_get_no_reply(
    world: World,
) -> None:
    now = datetime.now(UTC)
    common: dict[str, Any] = {"account_id": ACCOUNT, "created_at": now, "content": "hello"}
    bodies = [
        payloads.private_note(conversation_id=40, message_id=9001, **common),
        payloads.agent_reply(conversation_id=41, message_id=9002, **common),
        payloads.bot_reply(conversation_id=42, message_id=9003, **common),
        payloads.incoming_text(conversation_id=43, message_id=9004, status="resolved", **common),
        payloads.incoming_text(conversation_id=44, message_id=9005, status="open", **common),
    ]
    for body in bodies:
        assert await world.deliver(body) == 200
    await asyncio.sleep(QUIET_CHECK_S)
    assert world.model.requests == []
    assert [r for r in world.chatwoot.requests if r.method == "POST"] == []


async def test_a_human_agent_answering_cancels_the_reply(world: World) -> None:
    await world.say(50, "can someone call me?")
    await world.say(50, "it's urgent")
    agent = payloads.agent_reply(
        account_id=ACCOUNT,
        conversation_id=50,
        message_id=9100,
        content="Calling you now!",
        created_at=datetime.now(UTC),
    )
    assert await world.deliver(agent) == 200
    await asyncio.sleep(QUIET_CHECK_S)
    assert world.replies(50) == []
    assert world.model.requests == []


async def test_a_phone_echo_counts_as_a_human(world: World) -> None:
    await world.say(51, "hello?")
    echo = payloads.phone_echo(
        account_id=ACCOUNT,
        conversation_id=51,
        message_id=9101,
        content="answered from the phone",
        created_at=datetime.now(UTC),
    )
    assert await world.deliver(echo) == 200
    await asyncio.sleep(QUIET_CHECK_S)
    assert world.replies(51) == []


async def test_killed_before_the_window_closes_and_restarted_answers_exactly_once(
    world: World,
) -> None:
    await world.say(60, "my order 6060")
    await world.say(60, "is late")
    world.service.kill()  # SIGKILL: no shutdown code runs
    await world.service.start()
    replies = await world.wait_for_replies(60, 1, REPLY_BOUND_S + 3)
    await asyncio.sleep(0.5)
    assert len(world.replies(60)) == len(replies) == 1
    assert "#6060" in replies[0]["content"]
    [prompt] = world.prompts()
    assert world.burst_lines(prompt) == ["my order 6060", "is late"]


@pytest.mark.lease_ms(10_000)  # the production default
async def test_a_buffer_held_by_a_killed_worker_is_answered_once_within_15_s(
    world: World,
) -> None:
    world.model.delay_next(30)  # the model is still writing when the process dies
    await world.say(70, "order 7070, where is it?")
    asked = await world.wait_for(lambda: bool(world.model.requests), REPLY_BOUND_S)
    assert asked, "the worker never asked the model"
    world.service.kill()
    killed_at = time.monotonic()
    await world.service.start()
    replies = await world.wait_for_replies(70, 1, 15)
    taken_over_s = time.monotonic() - killed_at
    await asyncio.sleep(0.5)
    assert len(world.replies(70)) == len(replies) == 1
    assert taken_over_s <= 15
    assert "#7070" in replies[0]["content"]
    assert world.chatwoot.typing_events(ACCOUNT, 70)[-1] == "off"


async def test_a_voice_note_chatwoot_did_not_transcribe_is_transcribed_from_chatwoot(
    world: World,
) -> None:
    path = world.chatwoot.add_file("note.ogg", voice_note("my order 8080 never came"))
    await world.say(80, "hello")
    body = payloads.incoming_attachment(
        account_id=ACCOUNT,
        conversation_id=80,
        message_id=9200,
        created_at=datetime.now(UTC),
        file_type="audio",
        data_url=f"{world.chatwoot_url}{path}",
    )
    assert await world.deliver(body) == 200
    [reply] = await world.wait_for_replies(80, 1, REPLY_BOUND_S + 1)
    assert "#8080" in reply["content"]
    [prompt] = world.prompts()
    assert world.burst_lines(prompt) == ["hello", "[voice note] my order 8080 never came"]
    downloads = [r for r in world.chatwoot.requests if r.path.startswith("/rails/")]
    assert len(downloads) == 2  # the redirect and the file
    assert all("api_access_token" not in r.headers for r in downloads)


async def test_a_voice_note_pointing_off_chatwoot_is_not_fetched(world: World) -> None:
    body = payloads.incoming_attachment(
        account_id=ACCOUNT,
        conversation_id=81,
        message_id=9201,
        created_at=datetime.now(UTC),
        file_type="audio",
        data_url=f"{world.model_url}/v1/audio/secret.ogg",
    )
    assert await world.deliver(body) == 200
    await world.wait_for_replies(81, 1, REPLY_BOUND_S)
    assert world.model.transcriptions == []
    [prompt] = world.prompts()
    assert world.burst_lines(prompt) == ["[voice note] (voice note; no transcript available)"]


async def test_after_a_human_answers_the_bot_stays_out_until_handed_back(world: World) -> None:
    agent = payloads.agent_reply(
        account_id=ACCOUNT,
        conversation_id=90,
        message_id=9300,
        content="Hi, Bruno here, I'll take it from now.",
        created_at=datetime.now(UTC),
    )
    assert await world.deliver(agent) == 200
    await world.say(90, "thanks Bruno, order 9090 is the one")
    await asyncio.sleep(QUIET_CHECK_S)
    assert world.replies(90) == []
    assert world.model.requests == []
    # The agent hands the conversation back to the bot.
    back = payloads.conversation_status_changed(
        account_id=ACCOUNT, conversation_id=90, status="pending"
    )
    assert await world.deliver(back) == 200
    await world.say(90, "bot, are you there? order 9191")
    [reply] = await world.wait_for_replies(90, 1, REPLY_BOUND_S)
    assert "#9191" in reply["content"]


async def test_a_message_while_the_model_writes_gives_one_reply_to_the_whole_burst(
    world: World,
) -> None:
    world.model.delay_next(1.5)
    await world.say(95, "my order 9595")
    assert await world.wait_for(lambda: bool(world.model.requests), REPLY_BOUND_S)
    await world.say(95, "and the invoice please")
    replies = await world.wait_for_replies(95, 1, REPLY_BOUND_S + 1.5)
    await asyncio.sleep(0.5)
    assert len(world.replies(95)) == len(replies) == 1
    last = world.prompts()[-1]
    assert world.burst_lines(last) == ["my order 9595", "and the invoice please"]


@pytest.mark.lease_ms(10_000)
async def test_sigterm_hands_an_unfinished_buffer_back_at_once(world: World) -> None:
    world.service.env["WORKER_SHUTDOWN_GRACE_MS"] = "300"
    await world.service.restart()
    world.model.delay_next(30)  # still writing when the process is told to stop
    await world.say(96, "order 9696?")
    assert await world.wait_for(lambda: bool(world.model.requests), REPLY_BOUND_S)
    stopped_at = time.monotonic()
    assert await world.service.terminate() == 0
    assert time.monotonic() - stopped_at < 5
    await world.service.start()
    # Handed back: answered without waiting for the 10 s lease to run out.
    [reply] = await world.wait_for_replies(96, 1, 5)
    assert "#9696" in reply["content"]
    await asyncio.sleep(0.5)
    assert len(world.replies(96)) == 1
