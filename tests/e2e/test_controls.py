"""Live controls through the real CLI against a running service: flags and the rollout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from chatbuffer.simulator import payloads
from chatbuffer.storage import database
from tests.e2e.conftest import ACCOUNT, REPLY_BOUND_S, Service, World, free_port, simulators

pytestmark = pytest.mark.e2e

#: How long a running process may act on controls it read before a change (flags.CONTROLS_TTL).
CONTROLS_TTL_S = 5


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatbuffer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_flag_set_by_the_cli_changes_a_running_service_within_5_s(world: World) -> None:
    await world.say(31, "typing shows while the bot writes")
    await world.wait_for_replies(31, 1, REPLY_BOUND_S)
    # Typing goes off just after the reply is posted.
    assert await world.wait_for(
        lambda: world.chatwoot.typing_events(ACCOUNT, 31) == ["on", "off"], REPLY_BOUND_S
    )

    changed = cli(world.service.env, "flags", "set", "typing_indicators", "off")
    assert changed.returncode == 0, changed.stderr
    assert any(
        line.split()[:2] == ["typing_indicators", "off"] for line in changed.stdout.splitlines()
    ), changed.stdout
    changed_at = time.monotonic()
    await asyncio.sleep(max(0.0, changed_at + CONTROLS_TTL_S + 0.2 - time.monotonic()))
    await world.say(32, "no typing once the flag is off")
    assert len(await world.wait_for_replies(32, 1, REPLY_BOUND_S)) == 1
    assert world.chatwoot.typing_events(ACCOUNT, 32) == []
    # Only the inbox named differs from the global value.
    per_inbox = cli(world.service.env, "flags", "set", "typing_indicators", "on", "--inbox", "9")
    assert per_inbox.returncode == 0, per_inbox.stderr
    assert "9:on" in per_inbox.stdout


def test_an_unknown_flag_is_refused_with_the_list(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    refused = cli(env, "flags", "set", "buffering", "off")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "invalid choice: 'buffering'" in refused.stderr
    assert "message_buffering" in refused.stderr and "typing_indicators" in refused.stderr


def _active(db_url: str) -> dict[int, int]:
    """Conversations with a buffer still collecting messages, and how many it holds."""
    engine = create_engine(database.sync_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT conversation_id, message_count FROM message_buffer "
                    "WHERE status = 'active'"
                )
            ).all()
    finally:
        engine.dispose()
    return {r[0]: r[1] for r in rows}


@pytest.mark.serial
async def test_at_30_percent_about_300_of_1000_conversations_are_buffered_and_stay_so(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'rollout.db'}"
    port = free_port()
    conversations = range(2001, 3001)
    async with simulators(port) as sims:
        # A long window: a buffered conversation is still collecting when the test looks.
        env = sims.service_env(db_url, MESSAGE_BUFFER_DURATION_MS="60000")
        assert cli(env, "migrate").returncode == 0
        rollout = cli(env, "rollout", "set", "30")
        assert rollout.returncode == 0, rollout.stderr
        assert "buffered path: 30% of conversations" in rollout.stdout
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        try:
            gate = asyncio.Semaphore(32)

            async def say(conversation: int, round_: int) -> Any:
                async with gate:
                    return await sims.chatwoot.send_webhook(
                        payloads.incoming_text(
                            account_id=ACCOUNT,
                            conversation_id=conversation,
                            message_id=conversation * 10 + round_,
                            content=f"message {round_}",
                            created_at=datetime.now(UTC),
                        )
                    )

            for round_ in (1, 2):
                deliveries = await asyncio.gather(*(say(c, round_) for c in conversations))
                assert {d.status_code for d in deliveries} == {200}
                active = _active(db_url)
                if round_ == 1:
                    buffered = set(active)
                    assert 270 <= len(buffered) <= 330, len(buffered)
                    assert set(active.values()) == {1}
                else:
                    # The same conversations, each still collecting, now with both messages.
                    assert set(active) == buffered
                    assert set(active.values()) == {2}
        finally:
            await service.stop()
