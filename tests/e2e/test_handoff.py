"""Hand-offs and the bot's state per conversation, end to end: the real ``chatbuffer serve``, the
Chatwoot simulator (every request checked against Chatwoot's spec), a scripted model, 1 s windows,
and the real ``chatbuffer conversation`` CLI on the same database.

Each trigger (a human agent's message, the model's ``handoff`` action, low confidence, a control
word inside a burst) and each way back (the status set back to ``pending``, the contact reopening
a resolved conversation, ``chatbuffer conversation resume``) is shown as a user would see it: what
Chatwoot received, and what ``conversation show`` prints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chatbuffer.simulator import payloads
from chatbuffer.simulator.model import support_agent
from tests.e2e.conftest import (
    ACCOUNT,
    REPLY_BOUND_S,
    WINDOW_MS,
    Service,
    World,
    free_port,
    simulators,
    user_text,
)
from tests.e2e.test_controls import cli

pytestmark = pytest.mark.e2e

#: The brief's bound for a control word: the note and the status change within 2 s.
CONTROL_WORD_BOUND_S = 2.0
#: Long enough for a burst that would be answered to have been answered.
QUIET_S = WINDOW_MS / 1000 + 1.5

REFUND_REPLY = "I'm passing you to a colleague who handles refunds; they will write here shortly."


def script(messages: list[dict[str, Any]]) -> dict[str, Any] | str:
    """The support agent, but it asks for a person about refunds (with a confident answer for
    the contact) and is unsure about anything "unsure"."""
    prompt = user_text({"messages": messages}) if messages else ""
    # Only this burst counts, not the history shown with it.
    burst = "\n".join(World.burst_lines(prompt)).lower() if "Combined" in prompt else ""
    answer = support_agent(messages)
    if not isinstance(answer, dict):
        return answer
    if "refund" in burst:
        return {**answer, "content": REFUND_REPLY, "intent": "refund", "actions": ["handoff"]}
    if "unsure" in burst:
        return {**answer, "confidence": 0.2, "intent": "warranty"}
    return answer


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    port = free_port()
    async with simulators(port, model_script=script) as sims:
        env = sims.service_env(db_url, HUMAN_TAKEOVER_PAUSE_MS="3600000")
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        try:
            yield sims.world(service)
        finally:
            await service.stop()


def show(world: World, conversation: int) -> str:
    """The ``bot:`` line of ``chatbuffer conversation show``."""
    shown = cli(world.service.env, "conversation", "show", str(ACCOUNT), str(conversation))
    assert shown.returncode == 0, shown.stderr
    assert f"conversation: {ACCOUNT}/{conversation}" in shown.stdout
    return next(line for line in shown.stdout.splitlines() if line.startswith("bot: "))


def asked_about(world: World, text: str) -> bool:
    return any(text in prompt for prompt in world.prompts())


async def status_changed(world: World, conversation: int, status: str, previous: str) -> None:
    """An agent (or Chatwoot) changes the status: the simulator's state and the webhook."""
    world.chatwoot.set_status(ACCOUNT, conversation, status)
    code = await world.deliver(
        payloads.conversation_status_changed(
            account_id=ACCOUNT,
            conversation_id=conversation,
            status=status,
            previous_status=previous,
            at=datetime.now(UTC),
        )
    )
    assert code == 200


async def answered_again(world: World, conversation: int, text: str) -> None:
    before = len(world.replies(conversation))
    await world.say(conversation, text)
    replies = await world.wait_for_replies(conversation, before + 1, REPLY_BOUND_S)
    assert len(replies) == before + 1


# -- triggers and the ways back ---------------------------------------------------------------


async def test_a_control_word_in_a_burst_hands_off_at_once_and_nothing_of_it_is_answered(
    world: World,
) -> None:
    conversation = 61
    await world.say(conversation, "hi, my order 4411 never came")
    await world.say(conversation, "this is the third time I write")
    said_at = time.monotonic()
    await world.say(conversation, "Humano!")
    # The contact keeps typing, not knowing the bot stepped back.
    await world.say(conversation, "hello?? anyone there")

    def handed_off() -> bool:
        return (
            world.chatwoot.status(ACCOUNT, conversation) == "open"
            and len(world.chatwoot.private_notes(ACCOUNT, conversation)) == 1
        )

    assert await world.wait_for(handed_off, CONTROL_WORD_BOUND_S)
    took = time.monotonic() - said_at
    assert took < CONTROL_WORD_BOUND_S, took
    [note] = world.chatwoot.private_notes(ACCOUNT, conversation)
    assert "control_word" in note["content"] and "'humano'" in note["content"]
    assert "hi, my order 4411 never came / this is the third time I write" in note["content"]
    assert show(world, conversation).startswith("bot: handed off since ")
    assert "control_word" in show(world, conversation)

    # Nothing of the burst, nor what came right after, is answered or even sent to the model.
    await asyncio.sleep(QUIET_S)
    assert world.replies(conversation) == []
    assert not asked_about(world, "4411") and not asked_about(world, "anyone there")
    assert world.chatwoot.typing_events(ACCOUNT, conversation) == []
    assert len(world.chatwoot.private_notes(ACCOUNT, conversation)) == 1

    # The conversation is open now: what the contact writes is kept, not answered.
    await world.say(conversation, "ok I will wait", status="open")
    await asyncio.sleep(QUIET_S)
    assert world.replies(conversation) == []

    # An agent hands it back by setting it to pending: the bot answers again, with the history.
    await status_changed(world, conversation, "pending", "open")
    assert show(world, conversation).startswith("bot: active since ")
    await answered_again(world, conversation, "thanks, can you confirm the address?")
    assert asked_about(world, "ok I will wait")


async def test_the_models_handoff_action_sends_its_reply_first_then_a_person_takes_over(
    world: World,
) -> None:
    conversation = 62
    await world.say(conversation, "I want a refund for order 5512")
    [reply] = await world.wait_for_replies(conversation, 1, REPLY_BOUND_S)
    assert reply["content"] == REFUND_REPLY
    assert await world.wait_for(
        lambda: world.chatwoot.status(ACCOUNT, conversation) == "open", REPLY_BOUND_S
    )
    [note] = world.chatwoot.private_notes(ACCOUNT, conversation)
    # The reply was posted before the note, and the note says why and what the contact wrote.
    assert int(reply["id"]) < int(note["id"])
    assert "the model asked for a human (intent: refund)" in note["content"]
    assert "I want a refund for order 5512" in note["content"]
    assert "handed off since " in show(world, conversation)

    # While handed off (even if an event still says pending), nothing is answered.
    await world.say(conversation, "is the refund approved?")
    await asyncio.sleep(QUIET_S)
    assert len(world.replies(conversation)) == 1

    # The agent resolves it; later the contact writes and Chatwoot reopens it as pending.
    await status_changed(world, conversation, "resolved", "open")
    world.chatwoot.set_status(ACCOUNT, conversation, "pending")
    reopened = payloads.conversation_status_changed(
        account_id=ACCOUNT,
        conversation_id=conversation,
        status="pending",
        previous_status="resolved",
        at=datetime.now(UTC),
    )
    reopened["event"] = "conversation_updated"
    assert await world.deliver(reopened) == 200
    assert show(world, conversation).startswith("bot: active since ")
    await answered_again(world, conversation, "hello again, one more question about 7788")


async def test_low_confidence_leaves_the_draft_to_a_person_until_the_status_is_pending(
    world: World,
) -> None:
    conversation = 63
    await world.say(conversation, "unsure whether the warranty covers water")
    assert await world.wait_for(
        lambda: world.chatwoot.status(ACCOUNT, conversation) == "open", REPLY_BOUND_S
    )
    [note] = world.chatwoot.private_notes(ACCOUNT, conversation)
    assert "below the threshold" in note["content"]
    assert "The contact wrote: unsure whether the warranty covers water" in note["content"]
    assert world.replies(conversation) == []
    assert "handed off since " in show(world, conversation)
    assert "below the threshold" in show(world, conversation)

    await status_changed(world, conversation, "pending", "open")
    assert show(world, conversation).startswith("bot: active since ")
    await answered_again(world, conversation, "and what about order 4455?")


async def test_an_agents_message_pauses_the_bot_until_an_operator_resumes_it(
    world: World,
) -> None:
    conversation = 64
    await world.say(conversation, "where is order 9911?")
    assert (
        await world.deliver(
            payloads.agent_reply(
                account_id=ACCOUNT,
                conversation_id=conversation,
                message_id=world.next_message_id + 100,
                content="Hi, Bruno here, let me check.",
                created_at=datetime.now(UTC),
            )
        )
        == 200
    )
    paused = show(world, conversation)
    assert paused.startswith("bot: paused by a human until ")
    # The pause (HUMAN_TAKEOVER_PAUSE_MS) ends about an hour from now.
    until = datetime.fromisoformat(paused.removeprefix("bot: paused by a human until "))
    assert 3500 < (until - datetime.now(UTC)).total_seconds() <= 3600
    await world.say(conversation, "thanks Bruno")
    await asyncio.sleep(QUIET_S)
    assert world.replies(conversation) == []

    resumed = cli(world.service.env, "conversation", "resume", str(ACCOUNT), str(conversation))
    assert resumed.returncode == 0, resumed.stderr
    assert "bot: active since " in resumed.stdout and "resumed by an operator" in resumed.stdout
    await answered_again(world, conversation, "one more thing: order 9912")
    # What the contact said during the pause is part of the history the model read.
    assert asked_about(world, "thanks Bruno")


async def test_an_operator_turns_the_bot_off_and_on_for_one_conversation(world: World) -> None:
    conversation = 65
    off = cli(
        world.service.env, "conversation", "off", str(ACCOUNT), str(conversation), "--reason", "vip"
    )
    assert off.returncode == 0, off.stderr
    assert "bot: off since " in off.stdout and "vip" in off.stdout
    await world.say(conversation, "hello, order 3344?")
    await asyncio.sleep(QUIET_S)
    assert world.replies(conversation) == []
    assert world.chatwoot.typing_events(ACCOUNT, conversation) == []
    # A status change does not undo an operator's off.
    await status_changed(world, conversation, "pending", "open")
    assert show(world, conversation).startswith("bot: off since ")

    resumed = cli(world.service.env, "conversation", "resume", str(ACCOUNT), str(conversation))
    assert resumed.returncode == 0, resumed.stderr
    await answered_again(world, conversation, "still waiting on 3344")


def test_bad_ids_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    for args in (("show", "1", "abc"), ("resume", "-3", "7"), ("show", "1", "99999999999")):
        refused = cli(env, "conversation", *args)
        assert refused.returncode == 2, refused
        assert "Traceback" not in refused.stderr
        assert "must be a whole number from 1 to 2147483647" in refused.stderr
