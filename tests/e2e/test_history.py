"""The whole conversation and who the contact is, end to end: the real service between the
Chatwoot simulator and the OpenAI-compatible simulator, over HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from chatbuffer.simulator import payloads
from chatbuffer.storage import database
from chatbuffer.storage.tables import buffered_messages, conversation_memory, history_messages
from tests.e2e.conftest import ACCOUNT, REPLY_BOUND_S, TOKEN, Service, World, free_port, simulators

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def service(
    db_url: str, tmp_path: Path, *, user_token: bool = False, **env: str
) -> AsyncIterator[World]:
    port = free_port()
    async with simulators(port, user_token=user_token) as sims:
        process = Service(
            env=sims.service_env(db_url, **env), port=port, log=tmp_path / "service.log"
        )
        await process.start()
        try:
            yield sims.world(process)
        finally:
            await process.stop()


def history_lines(prompt: str) -> list[str]:
    """The lines the model read inside <conversation_history>."""
    if "<conversation_history>\n" not in prompt:
        return []
    inside = prompt.split("<conversation_history>\n", 1)[1]
    return inside.split("\n</conversation_history>", 1)[0].splitlines()


def context(prompt: str) -> str:
    return prompt.split("<customer_context>\n", 1)[1].split("\n</customer_context>", 1)[0]


def rows(db_url: str, query: Any) -> list[Any]:
    engine = create_engine(database.sync_url(db_url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(query).all())
    finally:
        engine.dispose()


async def test_a_human_agent_s_answer_between_two_bursts_is_in_the_second_prompt(
    db_url: str, tmp_path: Path
) -> None:
    async with service(db_url, tmp_path) as world:
        await world.say(90, "my jacket arrived torn")
        [first_reply] = await world.wait_for_replies(90, 1, REPLY_BOUND_S)
        where: dict[str, Any] = {"account_id": ACCOUNT, "conversation_id": 90}
        world.next_message_id += 1
        answered = world.next_message_id
        assert (
            await world.deliver(
                payloads.agent_reply(
                    message_id=answered,
                    content="So sorry, Ana! I refunded order 4411 today.",
                    created_at=datetime.now(UTC),
                    agent_name="Bruno",
                    **where,
                )
            )
            == 200
        )
        world.next_message_id += 1
        assert (
            await world.deliver(
                payloads.private_note(
                    message_id=world.next_message_id,
                    content="finance approved the refund",
                    created_at=datetime.now(UTC),
                    **where,
                )
            )
            == 200
        )
        # Bruno hands the conversation back to the bot.
        assert (
            await world.deliver(payloads.conversation_status_changed(status="pending", **where))
            == 200
        )
        await world.say(90, "thanks! when will I see the money?")
        await world.wait_for_replies(90, 2, REPLY_BOUND_S)
        first, second = world.prompts()
    assert history_lines(first) == []
    assert history_lines(second) == [
        "Customer: my jacket arrived torn",
        f"You: {first_reply['content']}",
        "Human agent Bruno: So sorry, Ana! I refunded order 4411 today.",
    ]
    assert "finance" not in second
    stored = rows(db_url, select(history_messages.c.chatwoot_message_id, history_messages.c.author))
    assert stored == [(answered, "Bruno")]


async def test_a_listed_custom_attribute_reaches_the_prompt_and_an_unlisted_one_does_not(
    db_url: str, tmp_path: Path
) -> None:
    async with service(db_url, tmp_path, CONTACT_ATTRIBUTES_TO_MODEL="plan") as world:
        await world.say(
            91,
            "olá, meu pedido ainda não chegou",
            contact_attributes={"plan": "gold", "cpf": "123.456.789-00"},
            conversation_attributes={"order_id": "A-77"},
            labels=["vip"],
            contact_email="ana@example.com",
        )
        await world.wait_for_replies(91, 1, REPLY_BOUND_S)
        [prompt] = world.prompts()
    about = context(prompt)
    assert '"plan": "gold"' in about
    assert '"labels": [\n    "vip"\n  ]' in about
    assert '"inbox": "WhatsApp Sales"' in about
    assert '"language": "pt"' in about
    for unlisted in ("cpf", "123.456.789-00", "order_id", "A-77", "ana@example.com", "+55119"):
        assert unlisted not in prompt
    # Not even stored.
    [(sender, conversation)] = rows(
        db_url, select(buffered_messages.c.sender_info, buffered_messages.c.conversation_info)
    )
    assert sender["custom_attributes"] == {"plan": "gold"}
    assert "email" not in sender and "phone_number" not in sender
    assert "custom_attributes" not in conversation


async def test_history_from_before_chatbuffer_is_fetched_once_and_summarised(
    db_url: str, tmp_path: Path
) -> None:
    async with service(
        db_url,
        tmp_path,
        user_token=True,
        CHATWOOT_USER_TOKEN=TOKEN,
        HISTORY_LIMIT="2",
        HISTORY_SUMMARY_EVERY="2",
    ) as world:
        start = datetime.now(UTC) - timedelta(days=3)
        for i, (sender, text) in enumerate(
            [
                ("contact", "do you ship to Porto?"),
                ("user", "Yes, in 3 working days."),
                ("contact", "great, ordering the blue jacket"),
                ("user", "Your order is A-77."),
            ]
        ):
            world.chatwoot.add_message(
                ACCOUNT,
                92,
                message_id=100 + i,
                content=text,
                created_at=start + timedelta(minutes=i),
                sender=sender,  # type: ignore[arg-type]
                sender_name="Carla" if sender == "user" else "Ana",
            )
        await world.say(92, "hi, where is my jacket?")
        await world.wait_for_replies(92, 1, REPLY_BOUND_S)
        # The summary is made after the reply: wait for its request too.
        assert await world.wait_for(lambda: len(world.model.requests) >= 2, REPLY_BOUND_S)
        await world.say(92, "hello?")
        await world.wait_for_replies(92, 2, REPLY_BOUND_S)
        requests = list(world.model.requests)
        gets = [r.query for r in world.chatwoot.requests if r.method == "GET"]
    first, summary, second = (r["messages"] for r in requests[:3])
    first_user = first[1]["content"]
    first_text = first_user if isinstance(first_user, str) else first_user[0]["text"]
    assert history_lines(first_text) == [
        "Customer: great, ordering the blue jacket",
        "Human agent Carla: Your order is A-77.",
    ]
    assert "running summary" in summary[0]["content"]
    assert "Customer: do you ship to Porto?" in summary[1]["content"]
    second_text = second[1]["content"]
    assert history_lines(second_text)[0] == (
        "Summary of the 2 turns before these: Summary: Customer: do you ship to Porto? / "
        "Agent Carla: Yes, in 3 working days."
    )
    assert [g for g in gets if "before" in g] == [{"before": str(world.next_message_id - 1)}]
    assert len(rows(db_url, select(history_messages))) == 4
    [(turns,)] = rows(db_url, select(conversation_memory.c.summary_turns))
    assert turns >= 2
