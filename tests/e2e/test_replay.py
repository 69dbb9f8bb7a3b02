"""A buffer that failed for good, seen and replayed by an operator with ``chatbuffer buffers``.

The real ``serve`` process between the simulators; the command is a separate process that reaches
it over HTTP with ADMIN_TOKEN, as an operator's shell would.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ACCOUNT, Service, free_port, simulators
from tests.e2e.test_cli import assert_refused, chatbuffer, clean_env

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "e2e-admin-token-7c41d09e5b"


async def test_a_failed_buffer_is_listed_and_replayed_into_one_reply(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(db_url, ADMIN_TOKEN=ADMIN_TOKEN)
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        try:
            # The model refuses the request for good (a 400 is never retried).
            sims.model.fail_next(400)
            await world.say(61, "my parcel never came")
            # Handed to a human: a private note, then the conversation opened for them.
            await world.wait_for(lambda: sims.chatwoot.status(ACCOUNT, 61) == "open", 10)
            [note] = sims.chatwoot.private_notes(ACCOUNT, 61)
            assert "answered 400" in note["content"]
            assert world.replies(61) == []

            admin = clean_env(ADMIN_TOKEN=ADMIN_TOKEN)
            url = ["buffers", "--url", service.url]
            listed = await asyncio.to_thread(chatbuffer, *url, "list", env=admin, cwd=tmp_path)
            assert listed.returncode == 0, listed.stderr
            [row] = listed.stdout.splitlines()[1:]
            buffer_id = row.split()[0]
            assert re.fullmatch(r"[0-9a-f-]{36}", buffer_id)
            assert f"{ACCOUNT}/61" in row and "failed" in row and "answered 400" in row

            wrong = clean_env(ADMIN_TOKEN="not-the-admin-token-123")
            refused = await asyncio.to_thread(
                chatbuffer, *url, "replay", buffer_id, env=wrong, cwd=tmp_path
            )
            assert_refused(refused, "answered 401", "a valid admin token is required")
            unset = await asyncio.to_thread(
                chatbuffer, *url, "replay", buffer_id, env=clean_env(), cwd=tmp_path
            )
            assert_refused(unset, "ADMIN_TOKEN is not set")
            assert world.replies(61) == []

            replayed = await asyncio.to_thread(
                chatbuffer, *url, "replay", buffer_id, env=admin, cwd=tmp_path
            )
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.strip() == (
                f"chatbuffer: buffer {buffer_id} is scheduled to be answered again"
            )
            [reply] = await world.wait_for_replies(61, 1, timeout_s=10)
            assert reply["content_attributes"]["chatbuffer"]["buffer_id"] == buffer_id
            # A second replay finds nothing to do; the reply stays single.
            again = await asyncio.to_thread(
                chatbuffer, *url, "replay", buffer_id, env=admin, cwd=tmp_path
            )
            assert_refused(again, "answered 409", "only failed buffers can be replayed")
            await asyncio.sleep(1.5)
            assert len(world.replies(61)) == 1
        finally:
            await service.stop()
