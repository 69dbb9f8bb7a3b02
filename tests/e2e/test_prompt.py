"""What the model receives, end to end: the real service between the Chatwoot simulator (serving
real PNG and PDF bytes made here) and the OpenAI-compatible simulator; and `chatbuffer prompt`
against the same service's database."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chatbuffer.simulator import payloads
from chatbuffer.simulator.media import pdf, png
from chatbuffer.simulator.model import Script, support_agent
from tests.e2e.conftest import (
    ACCOUNT,
    REPLY_BOUND_S,
    Service,
    World,
    free_port,
    simulators,
    user_text,
)
from tests.e2e.test_cli import WORKER_SETTINGS, assert_refused, chatbuffer, clean_env

pytestmark = pytest.mark.e2e

DEFAULT_INSTRUCTIONS = "# Acme Bikes\nWe sell city bikes. Open 9-18, Monday to Saturday."
WORKSHOP_INSTRUCTIONS = "# Acme Workshop\nWe repair bikes; a check-up costs 30 EUR."


@asynccontextmanager
async def service(
    db_url: str, tmp_path: Path, *, model_script: Script | None = None, **env: str
) -> AsyncIterator[World]:
    port = free_port()
    async with simulators(port, model_script=model_script) as sims:
        process = Service(
            env=sims.service_env(db_url, **env), port=port, log=tmp_path / "service.log"
        )
        await process.start()
        try:
            yield sims.world(process)
        finally:
            await process.stop()


async def send(world: World, body: dict[str, Any]) -> None:
    assert await world.deliver(body) == 200


def at_now() -> dict[str, Any]:
    return {"account_id": ACCOUNT, "created_at": datetime.now(UTC)}


def next_id(world: World) -> int:
    """A message id after every earlier one (Chatwoot's ids grow; a burst is read in id order)."""
    world.next_message_id += 1
    return world.next_message_id


def photo(world: World, conversation: int, image: bytes, caption: str | None) -> dict[str, Any]:
    message_id = next_id(world)
    path = world.chatwoot.add_file(f"photo-{message_id}.png", image, "image/png")
    return payloads.incoming_attachment(
        conversation_id=conversation,
        message_id=message_id,
        file_type="image",
        data_url=f"{world.chatwoot_url}{path}",
        content=caption,
        **at_now(),
    )


async def prompt_command(world: World, *args: str) -> tuple[int, str, str]:
    """`chatbuffer prompt …` with the service's environment, without blocking the simulators."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatbuffer",
        "prompt",
        *args,
        env=world.service.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_business_instructions_lead_the_system_message_per_inbox(
    db_url: str, tmp_path: Path
) -> None:
    default = tmp_path / "bot.md"
    default.write_text(DEFAULT_INSTRUCTIONS, encoding="utf-8")
    inboxes = tmp_path / "inboxes"
    inboxes.mkdir()
    (inboxes / "9.md").write_text(WORKSHOP_INSTRUCTIONS, encoding="utf-8")
    async with service(
        db_url, tmp_path, BOT_INSTRUCTIONS_FILE=str(default), BOT_INSTRUCTIONS_DIR=str(inboxes)
    ) as world:
        await world.say(61, "do you sell cargo bikes?")
        await world.say(62, "how much is a check-up?", inbox_id=9)
        await world.wait_for_replies(61, 1, REPLY_BOUND_S)
        await world.wait_for_replies(62, 1, REPLY_BOUND_S)
        systems = {
            "cargo" in user_text(r): r["messages"][0]["content"] for r in world.model.requests
        }
    assert systems[True].startswith(DEFAULT_INSTRUCTIONS + "\n\nYou are a support agent")
    assert systems[False].startswith(WORKSHOP_INSTRUCTIONS + "\n\nYou are a support agent")
    assert DEFAULT_INSTRUCTIONS not in systems[False]


async def test_two_images_reach_the_model_as_their_bytes_and_no_chatwoot_link_leaves(
    db_url: str, tmp_path: Path
) -> None:
    red, blue = png(5, 4, (220, 20, 20)), png(3, 3, (20, 20, 220))
    async with service(db_url, tmp_path) as world:
        await send(world, photo(world, 70, red, "the frame is scratched"))
        await send(world, photo(world, 70, blue, None))
        await world.say(70, "what can you do about it?")
        [reply] = await world.wait_for_replies(70, 1, REPLY_BOUND_S)
        requests = list(world.model.requests)
        buffer_id = reply["content_attributes"]["chatbuffer"]["buffer_id"]

        # `prompt show` prints exactly what was sent for that buffer.
        code, out, err = await prompt_command(world, "show", buffer_id)
        assert code == 0, err
        assert json.loads(out) == requests[0]
        code, out, err = await prompt_command(world, "show", "00000000-0000-0000-0000-00000000f00d")
        assert (code, out) == (2, "")
        assert err.strip() == (
            "chatbuffer: error: no stored buffer 00000000-0000-0000-0000-00000000f00d with messages"
        )

    [request] = requests
    user = request["messages"][1]["content"]
    images = [p["image_url"]["url"] for p in user if p["type"] == "image_url"]
    assert [base64.b64decode(url.removeprefix("data:image/png;base64,")) for url in images] == [
        red,
        blue,
    ]
    assert all(url.startswith("data:image/png;base64,") for url in images)
    assert [p["text"] for p in user if p["type"] == "text"][1:] == ["[image 1]", "[image 2]"]
    assert World.burst_lines(user[0]["text"]) == [
        "[image 1, attached below] the frame is scratched",
        "[image 2, attached below]",
        "what can you do about it?",
    ]
    sent = json.dumps(requests)
    assert world.chatwoot_url not in sent
    assert "active_storage" not in sent and "127.0.0.1" not in sent


async def test_a_pdfs_text_reaches_the_prompt(db_url: str, tmp_path: Path) -> None:
    invoice = pdf("INVOICE 7731\nBlue jacket, size M: 89.90 EUR", "Paid by card on 2 March")
    async with service(db_url, tmp_path) as world:
        path = world.chatwoot.add_file("invoice-7731.pdf", invoice, "application/pdf")
        await send(
            world,
            payloads.incoming_attachment(
                conversation_id=80,
                message_id=next_id(world),
                file_type="file",
                data_url=f"{world.chatwoot_url}{path}",
                content="this is my invoice",
                **at_now(),
            ),
        )
        await world.wait_for_replies(80, 1, REPLY_BOUND_S)
        [prompt] = world.prompts()
    assert World.burst_lines(prompt) == [
        "[file 1: invoice-7731.pdf, text below] this is my invoice"
    ]
    files = prompt.split("<customer_files>\n", 1)[1].split("\n</customer_files>", 1)[0]
    assert files.splitlines() == [
        "[file 1: invoice-7731.pdf, 2 pages]",
        "INVOICE 7731",
        "Blue jacket, size M: 89.90 EUR",
        "",
        "Paid by card on 2 March",
    ]


def first_answer_is_prose(messages: list[dict[str, Any]]) -> dict[str, Any] | str:
    """A model that answers in prose until it is asked to repair its answer."""
    if messages[-1]["role"] == "user" and "could not be used" in str(messages[-1]["content"]):
        return support_agent(messages)
    return "Sure! Your order 4411 is on its way."


async def test_invalid_json_is_repaired_once(db_url: str, tmp_path: Path) -> None:
    async with service(db_url, tmp_path, model_script=first_answer_is_prose) as world:
        await world.say(90, "where is order 4411?")
        [reply] = await world.wait_for_replies(90, 1, REPLY_BOUND_S)
        await asyncio.sleep(0.5)  # a third call, or a second reply, would show up now
        requests = list(world.model.requests)
        replies = world.replies(90)
    assert len(replies) == 1 and "#4411" in reply["content"]
    first, second = requests
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][2] == {
        "role": "assistant",
        "content": "Sure! Your order 4411 is on its way.",
    }
    assert second["messages"][3]["role"] == "user"
    assert second["messages"][3]["content"].startswith(
        "Your answer could not be used: it is not JSON"
    )
    log = (tmp_path / "service.log").read_text()
    assert "asking it once to repair it" in log
    assert "Sure! Your order" not in log  # the answer may quote the customer: not logged


async def test_prompt_try_asks_again_with_new_instructions_and_sends_nothing(
    db_url: str, tmp_path: Path
) -> None:
    trial = tmp_path / "new-bot.md"
    trial.write_text("# Trial\nAlways mention free delivery.", encoding="utf-8")
    async with service(db_url, tmp_path) as world:
        await world.say(95, "hi, order 5150 please")
        [reply] = await world.wait_for_replies(95, 1, REPLY_BOUND_S)
        typing_done = lambda: world.chatwoot.typing_events(ACCOUNT, 95) == ["on", "off"]  # noqa: E731
        assert await world.wait_for(typing_done, 5)
        posted = len(world.chatwoot.requests)
        code, out, err = await prompt_command(
            world, "try", "--last", "3", "--instructions", str(trial)
        )
        assert code == 0, err
        assert len(world.chatwoot.requests) == posted  # nothing sent to Chatwoot
        [_, again] = world.model.requests
    assert again["messages"][0]["content"].startswith("# Trial\nAlways mention free delivery.\n\n")
    assert "   - hi, order 5150 please" in out
    assert "old: reply (sent)" in out and "new: reply (confidence 0.92" in out
    left = [line.split(" | ")[0].strip() for line in out.splitlines() if " | " in line]
    assert " ".join(left[2:]).startswith(reply["content"][:30])


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"PROMPT_TEMPLATE_FILE": "{dir}/absent.jinja"}, "PROMPT_TEMPLATE_FILE is invalid"),
        ({"PROMPT_TEMPLATE_FILE": "{dir}/bad.jinja"}, "'custmer' is undefined"),
        ({"BOT_INSTRUCTIONS_FILE": "{dir}/absent.md"}, "BOT_INSTRUCTIONS_FILE is invalid"),
        ({"BOT_INSTRUCTIONS_DIR": "{dir}"}, "bad.md is not named after an inbox"),
    ],
    ids=["template-missing", "template-undefined", "instructions-missing", "inbox-file-name"],
)
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unusable_prompt_file_stops_start_up_in_one_line(
    tmp_path: Path, settings: dict[str, str], named: str, command: str
) -> None:
    (tmp_path / "bad.jinja").write_text(
        "{% block system %}{{ custmer }}{% endblock %}{% block user %}u{% endblock %}"
    )
    (tmp_path / "bad.md").write_text("x")
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}", **WORKER_SETTINGS)
    env.update({k: v.format(dir=tmp_path) for k, v in settings.items()})
    args = [command] + (["--port", str(free_port())] if command == "serve" else [])
    assert_refused(chatbuffer(*args, env=env, cwd=tmp_path), named)
    assert not (tmp_path / "db.sqlite").exists()


def test_prompt_template_prints_the_shipped_template(tmp_path: Path) -> None:
    result = chatbuffer("prompt", "template", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "{% block system %}" in result.stdout and "{% block user %}" in result.stdout
