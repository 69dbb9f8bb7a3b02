"""The age cap holds against the real service: a contact who never pauses, with a slow model, is
answered within ``MAX_BUFFER_AGE_MS`` plus one model call, every message exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Service, World, free_port, simulators

pytestmark = [pytest.mark.e2e, pytest.mark.both_databases]

CAP_S = 3.0
MODEL_S = 1.5
EVERY_S = 0.5
TYPING_FOR_S = 8.0
#: HTTP, the claim, the POST and this test's polling, on a 2-core machine shared with other work.
SLACK_S = 1.5
CONVERSATION = 1300


def echo(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A model that answers with the names of the messages it was given."""
    lines = World.burst_lines(str(messages[-1]["content"]))
    return {
        "shouldRespond": True,
        "content": "answered " + " ".join(lines),
        "confidence": 0.95,
        "intent": "chat",
        "actions": [],
    }


async def test_a_contact_typing_past_the_age_cap_with_a_slow_model_is_answered_within_the_cap(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    said_at: dict[str, float] = {}
    answered_at: dict[str, list[float]] = {}
    async with simulators(port, model_script=echo) as sims:
        sims.model.delay_next(MODEL_S, times=1000)
        # The quiet period (1 s) is longer than the contact's gaps: only the cap closes buffers.
        env = sims.service_env(db_url, MAX_BUFFER_AGE_MS=str(int(CAP_S * 1000)))
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        stop = asyncio.Event()

        async def watch() -> None:
            seen = 0
            while not stop.is_set():
                replies = world.replies(CONVERSATION)
                for reply in replies[seen:]:
                    for name in str(reply["content"]).split()[1:]:
                        answered_at.setdefault(name, []).append(time.monotonic())
                seen = len(replies)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            start = time.monotonic()
            for i in range(int(TYPING_FOR_S / EVERY_S) + 1):
                await asyncio.sleep(max(0.0, start + i * EVERY_S - time.monotonic()))
                said_at[f"m{i}"] = time.monotonic()
                await world.say(CONVERSATION, f"m{i}")
            assert await world.wait_for(
                lambda: set(answered_at) >= set(said_at), CAP_S + MODEL_S + 5
            ), answered_at
        finally:
            stop.set()
            await watcher
            await service.stop()
    waited = {name: answered_at[name][0] - at for name, at in said_at.items()}
    print({name: round(w, 2) for name, w in waited.items()})
    assert all(len(times) == 1 for times in answered_at.values()), answered_at
    # Before the cap held, the first reply came only once the contact stopped typing (> 8 s).
    assert max(waited.values()) <= CAP_S + MODEL_S + SLACK_S, waited
