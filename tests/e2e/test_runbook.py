"""Every command of docs/runbook.md, run as written (through a shell, with the page's variables
set) against a real database and a running ``chatbuffer serve`` between the simulators, each
with its effect checked. A command added to the page without a check here fails the test, and so
does a check whose command left the page."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatbuffer.domain.shadow import is_shadow
from chatbuffer.simulator import payloads
from tests.e2e.conftest import ACCOUNT, REPLY_BOUND_S, Service, free_port, simulators
from tests.e2e.test_controls import CONTROLS_TTL_S
from tests.e2e.test_pause_shadow import chatwoot_calls, rows, stored_messages

pytestmark = pytest.mark.e2e

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
ADMIN_TOKEN = "e2e-admin-token-runbook-5d1c"
PREVIOUS_REVISION = "0010"


def runbook_commands() -> list[str]:
    """Each command line of the page's ``sh`` blocks, in page order."""
    blocks = re.findall(r"```sh\n(.*?)```", RUNBOOK.read_text(), flags=re.DOTALL)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_the_runbook_has_a_command_for_each_operation() -> None:
    commands = runbook_commands()
    assert all(c.startswith("chatbuffer ") for c in commands), commands
    for needed in ["pause", "resume", "flags set message_buffering off", "rollout set 0"]:
        assert any(c.startswith(f"chatbuffer {needed}") for c in commands), needed
    assert any(" replay " in c for c in commands)
    assert any(c.startswith("chatbuffer migrate --to") for c in commands)


class Shell:
    """Runs a runbook line the way an operator's shell would: ``chatbuffer`` on the PATH, the
    page's variables set."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        shim = tmp_path / "bin" / "chatbuffer"
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m chatbuffer "$@"\n')
        shim.chmod(0o755)
        self.env = {**env, "PATH": f"{shim.parent}:{env.get('PATH', '/usr/bin:/bin')}"}
        self.ran: list[str] = []

    async def run(self, command: str) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(
            subprocess.run,
            ["/bin/sh", "-c", command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        self.ran.append(command)
        return done


async def past_refresh() -> None:
    await asyncio.sleep(CONTROLS_TTL_S + 0.3)


def collecting(db_url: str, conversation: int) -> bool:
    """Whether the conversation has a buffer still waiting for the contact to pause."""
    return bool(
        rows(
            db_url,
            "SELECT 1 FROM message_buffer WHERE conversation_id = :c AND status = 'active'",
            c=conversation,
        )
    )


def revision(db_url: str) -> str:
    [(version,)] = rows(db_url, "SELECT version_num FROM alembic_version")
    return str(version)


async def test_every_runbook_command_does_what_the_page_says(db_url: str, tmp_path: Path) -> None:
    commands = runbook_commands()
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(db_url, ADMIN_TOKEN=ADMIN_TOKEN)
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        shell = Shell(
            {
                **env,
                "OPERATOR": "runbook tester",
                "CHATBUFFER_URL": service.url,
                "PREVIOUS_REVISION": PREVIOUS_REVISION,
            },
            tmp_path,
        )

        async def say_at_once(conversation: int, text: str) -> None:
            # The delivery alone, so the buffer is looked at before its 1 s window ends.
            world.next_message_id += 1
            delivery = await sims.chatwoot.send_webhook(
                payloads.incoming_text(
                    account_id=ACCOUNT,
                    conversation_id=conversation,
                    message_id=world.next_message_id,
                    content=text,
                    created_at=datetime.now(UTC),
                )
            )
            assert delivery.status_code == 200

        async def pause(command: str) -> None:
            done = await shell.run(command)
            assert "PAUSED by runbook tester" in done.stdout
            await past_refresh()
            await world.say(71, "said while the bot is paused")
            await asyncio.sleep(2.0)
            assert chatwoot_calls(world, 71) == []
            assert stored_messages(db_url, 71) == ["said while the bot is paused"]

        async def resume(command: str) -> None:
            done = await shell.run(command)
            assert "resumed by runbook tester" in done.stdout
            started = time.monotonic()
            bound = CONTROLS_TTL_S + 1 + REPLY_BOUND_S
            assert len(await world.wait_for_replies(71, 1, bound)) == 1
            assert time.monotonic() - started <= bound

        def path_check(
            conversation: int, *, buffered: bool, shows: str
        ) -> Callable[[str], Awaitable[None]]:
            async def check(command: str) -> None:
                done = await shell.run(command)
                assert re.search(shows, done.stdout), done.stdout
                await past_refresh()
                await say_at_once(conversation, "which path am I on?")
                assert collecting(db_url, conversation) is buffered
                assert len(await world.wait_for_replies(conversation, 1, REPLY_BOUND_S)) == 1

            return check

        async def shadow_on(command: str) -> None:
            done = await shell.run(command)
            assert "shadow mode: on" in done.stdout
            await past_refresh()
            await world.say(76, "in shadow mode")
            recorded = (
                "SELECT chatwoot_message_id FROM bot_replies "
                "WHERE conversation_id = 76 AND chatwoot_message_id IS NOT NULL"
            )
            assert await world.wait_for(lambda: bool(rows(db_url, recorded)), REPLY_BOUND_S)
            [(message_id,)] = rows(db_url, recorded)
            assert is_shadow(message_id)
            assert chatwoot_calls(world, 76) == []

        async def shadow_off(command: str) -> None:
            done = await shell.run(command)
            assert "shadow mode: off" in done.stdout
            await past_refresh()
            await world.say(77, "after shadow mode")
            assert len(await world.wait_for_replies(77, 1, REPLY_BOUND_S)) == 1

        async def listing(command: str) -> None:
            # A buffer that failed for good: the model refuses it (a 400 is never retried).
            sims.model.fail_next(400)
            await world.say(78, "my parcel never came")
            assert await world.wait_for(lambda: sims.chatwoot.status(ACCOUNT, 78) == "open", 10)
            done = await shell.run(command)
            [row] = [line for line in done.stdout.splitlines() if f"{ACCOUNT}/78" in line]
            assert "failed" in row
            shell.env["BUFFER_ID"] = row.split()[0]

        async def show(command: str) -> None:
            done = await shell.run(command)
            assert shell.env["BUFFER_ID"] in done.stdout
            assert "my parcel never came" in done.stdout

        async def replay(command: str) -> None:
            done = await shell.run(command)
            assert "scheduled to be answered again" in done.stdout
            assert len(await world.wait_for_replies(78, 1, 10)) == 1

        async def migrate_down(command: str) -> None:
            # No process of the newer release may run while the schema goes down.
            await service.stop()
            await shell.run(command)
            assert revision(db_url) == PREVIOUS_REVISION
            assert rows(db_url, "SELECT count(*) FROM alembic_version") == [(1,)]

        async def migrate_up(command: str) -> None:
            done = await shell.run(command)
            assert revision(db_url) != PREVIOUS_REVISION
            assert revision(db_url) in done.stdout
            # The newer release runs on it again: its start-up check of the schema passes.
            listed = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "chatbuffer", "flags", "list"],
                env=shell.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert listed.returncode == 0, listed.stderr
            assert re.search(r"message_buffering +on", listed.stdout)

        checks: dict[str, Callable[[str], Awaitable[None]]] = {
            'chatbuffer pause --by "$OPERATOR"': pause,
            'chatbuffer resume --by "$OPERATOR"': resume,
            "chatbuffer flags set message_buffering off": path_check(
                72, buffered=False, shows=r"message_buffering +off"
            ),
            "chatbuffer rollout set 0": path_check(
                74, buffered=False, shows="buffered path: 0% of conversations"
            ),
            # In the page's order the rollout is still at 0 here: the flag is on, and the
            # conversation is still answered at once; the next command puts it back.
            "chatbuffer flags set message_buffering on": path_check(
                73, buffered=False, shows=r"message_buffering +on"
            ),
            "chatbuffer rollout set 100": path_check(
                75, buffered=True, shows="buffered path: 100% of conversations"
            ),
            "chatbuffer rollout shadow on": shadow_on,
            "chatbuffer rollout shadow off": shadow_off,
            'chatbuffer buffers --url "$CHATBUFFER_URL" list': listing,
            'chatbuffer buffers --url "$CHATBUFFER_URL" show "$BUFFER_ID"': show,
            'chatbuffer buffers --url "$CHATBUFFER_URL" replay "$BUFFER_ID"': replay,
            'chatbuffer migrate --to "$PREVIOUS_REVISION"': migrate_down,
            "chatbuffer migrate": migrate_up,
        }
        assert sorted(commands) == sorted(checks), "the runbook and this test disagree"
        try:
            for command in commands:
                await checks[command](command)
        finally:
            await service.stop()
        assert shell.ran == commands
