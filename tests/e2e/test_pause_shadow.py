"""The kill switch, shadow mode and the live controls over the admin API, against a running
``chatbuffer serve`` between the simulators (1 s windows, real CLI, both databases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import create_engine, text

from chatbuffer.domain.shadow import is_shadow
from chatbuffer.storage import database
from tests.e2e.conftest import ACCOUNT, REPLY_BOUND_S, Service, World, free_port, simulators
from tests.e2e.test_controls import CONTROLS_TTL_S, cli

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "e2e-admin-token-0123456789"
#: Small enough for the test to wait past it, large enough that a burst said shortly before the
#: resume is still fresh when a worker sees the resume (at most CONTROLS_TTL_S later).
STALE_AFTER_MS = 20_000


@pytest.fixture
async def controlled(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(
            db_url, ADMIN_TOKEN=ADMIN_TOKEN, PAUSE_STALE_AFTER_MS=str(STALE_AFTER_MS)
        )
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        try:
            yield world
        finally:
            await service.stop()
        service.assert_log_free_of([t for t in world.said if len(t) >= 12])


def rows(db_url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(database.sync_url(db_url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def stored_messages(db_url: str, conversation: int) -> list[str]:
    return [
        r[0]
        for r in rows(
            db_url,
            "SELECT content FROM buffered_messages WHERE conversation_id = :c ORDER BY received_at",
            c=conversation,
        )
    ]


def chatwoot_calls(world: World, conversation: int) -> list[str]:
    """Every request the service made to Chatwoot about the conversation."""
    part = f"/conversations/{conversation}/"
    return [
        f"{r.method} {r.path}"
        for r in world.chatwoot.requests
        if part in r.path or r.path.endswith(part[:-1])
    ]


async def wait_ttl() -> None:
    """Past the live-controls refresh: every process has read the change."""
    await asyncio.sleep(CONTROLS_TTL_S + 0.3)


async def test_pause_stops_every_reply_and_resume_answers_fresh_bursts_and_hands_stale_ones_over(
    controlled: World, db_url: str
) -> None:
    world = controlled
    env = world.service.env
    await world.say(41, "before the pause")
    assert len(await world.wait_for_replies(41, 1, REPLY_BOUND_S)) == 1

    paused = cli(env, "pause", "--by", "on-call ana")
    assert paused.returncode == 0, paused.stderr
    assert "PAUSED by on-call ana" in paused.stdout
    assert "PAUSED by on-call ana" in cli(env, "rollout", "show").stdout
    await wait_ttl()
    asked = len(world.model.requests)

    # A burst that will have waited longer than PAUSE_STALE_AFTER_MS when the bot resumes...
    await world.say(43, "written early in the pause")
    await asyncio.sleep(STALE_AFTER_MS / 1000 + 0.5)
    # ...and one still fresh then.
    await world.say(42, "written late in the pause")
    await world.say(42, "second message late in the pause")
    await asyncio.sleep(1.0 + 0.5)  # both buffers are due: closed, waiting
    for conversation in (42, 43):
        assert chatwoot_calls(world, conversation) == []
        assert world.chatwoot.status(ACCOUNT, conversation) == "pending"
    assert len(world.model.requests) == asked
    assert stored_messages(db_url, 43) == ["written early in the pause"]
    assert stored_messages(db_url, 42) == [
        "written late in the pause",
        "second message late in the pause",
    ]

    resumed = cli(env, "resume", "--by", "on-call ana")
    resumed_at = time.monotonic()
    assert resumed.returncode == 0, resumed.stderr
    assert "running (resumed by on-call ana" in resumed.stdout
    # The refresh, then a paused worker's next look (1 s), then the reply.
    bound = CONTROLS_TTL_S + 1 + REPLY_BOUND_S
    answered = await world.wait_for(
        lambda: bool(world.replies(42) or world.chatwoot.private_notes(ACCOUNT, 42)), bound
    )
    assert answered, world.service.log.read_text()[-3000:]
    assert len(world.replies(42)) == 1, world.chatwoot.private_notes(ACCOUNT, 42)
    assert time.monotonic() - resumed_at <= bound
    # The fresh burst is answered once, as one burst.
    assert world.burst_lines(world.prompts()[-1]) == [
        "written late in the pause",
        "second message late in the pause",
    ]
    # The stale one goes to a human: a private note, the conversation opened, no reply.
    assert await world.wait_for(lambda: world.chatwoot.status(ACCOUNT, 43) == "open", bound)
    notes = world.chatwoot.private_notes(ACCOUNT, 43)
    assert len(notes) == 1 and "paused" in notes[0]["content"]
    assert world.replies(43) == []
    assert not any("written early in the pause" in p for p in world.prompts())


async def test_shadow_mode_asks_the_model_records_the_reply_and_sends_nothing(
    controlled: World, db_url: str
) -> None:
    world = controlled
    env = world.service.env
    on = cli(env, "rollout", "shadow", "on")
    assert on.returncode == 0, on.stderr
    assert "shadow mode: on" in on.stdout
    await wait_ttl()

    await world.say(51, "shadow burst one")
    await world.say(51, "shadow burst two")

    def recorded() -> list[Any]:
        return rows(
            db_url,
            "SELECT b.id, r.kind, r.content, r.chatwoot_message_id FROM message_buffer b "
            "JOIN bot_replies r ON r.account_id = b.account_id "
            "AND r.conversation_id = b.conversation_id AND r.buffer_id = b.id "
            "WHERE b.conversation_id = 51 AND b.status = 'completed'",
        )

    assert await world.wait_for(lambda: bool(recorded()), REPLY_BOUND_S + 2)
    [(buffer_id, kind, content, message_id)] = recorded()
    assert kind == "reply" and content and is_shadow(message_id)
    # The model was asked about the whole burst...
    assert world.burst_lines(world.prompts()[-1]) == ["shadow burst one", "shadow burst two"]
    # ...and Chatwoot heard nothing at all: no typing, no message, no note, no status.
    await asyncio.sleep(0.5)
    assert chatwoot_calls(world, 51) == []
    assert world.chatwoot.status(ACCOUNT, 51) == "pending"

    shown = cli(env, "buffers", "--url", world.service.url, "show", str(buffer_id))
    assert shown.returncode == 0, shown.stderr
    assert "SHADOW, not sent" in shown.stdout and content in shown.stdout
    assert "shadow burst two" in shown.stdout

    off = cli(env, "rollout", "shadow", "off")
    assert off.returncode == 0 and "shadow mode: off" in off.stdout
    await wait_ttl()
    await world.say(52, "after shadow mode")
    assert len(await world.wait_for_replies(52, 1, REPLY_BOUND_S)) == 1


async def test_the_admin_api_flips_a_flag_a_running_service_follows_within_5_s(
    controlled: World,
) -> None:
    world = controlled
    base = world.service.url
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx2.AsyncClient(base_url=base, trust_env=False, timeout=10) as http:
        await world.say(61, "typing shows before the change")
        await world.wait_for_replies(61, 1, REPLY_BOUND_S)
        assert await world.wait_for(
            lambda: world.chatwoot.typing_events(ACCOUNT, 61) == ["on", "off"], REPLY_BOUND_S
        )

        changed = await http.put(
            "/admin/flags/typing_indicators", json={"value": "off"}, headers=auth
        )
        assert changed.status_code == 200, changed.text
        flags = {f["name"]: f["on"] for f in changed.json()["flags"]}
        assert flags["typing_indicators"] is False
        changed_at = time.monotonic()
        await asyncio.sleep(max(0.0, changed_at + CONTROLS_TTL_S + 0.2 - time.monotonic()))
        await world.say(62, "no typing after the change")
        assert len(await world.wait_for_replies(62, 1, REPLY_BOUND_S)) == 1
        assert world.chatwoot.typing_events(ACCOUNT, 62) == []
        # The CLI reads what the API wrote.
        listed = cli(world.service.env, "flags", "list")
        assert any(
            line.split()[:2] == ["typing_indicators", "off"] for line in listed.stdout.splitlines()
        )

        # The rollout through the API, as `chatbuffer rollout` does it.
        percent = await http.put("/admin/rollout/percent", json={"percent": 25}, headers=auth)
        assert percent.status_code == 200 and percent.json()["rollout"]["percent"] == 25
        canary = await http.put("/admin/rollout/canaries/inbox:4", headers=auth)
        assert canary.json()["rollout"]["canaries"] == ["inbox:4"]
        shadow = await http.put("/admin/rollout/shadow", json={"value": "on"}, headers=auth)
        assert shadow.json()["rollout"]["shadow"] is True
        shown = cli(world.service.env, "rollout", "show")
        assert "25% of conversations" in shown.stdout and "inbox:4" in shown.stdout
        assert "shadow mode: on" in shown.stdout
        removed = await http.delete("/admin/rollout/canaries/inbox:4", headers=auth)
        assert removed.json()["rollout"]["canaries"] == []
        inbox = await http.put(
            "/admin/flags/message_buffering", json={"value": "off", "inbox": 9}, headers=auth
        )
        [buffering] = [f for f in inbox.json()["flags"] if f["name"] == "message_buffering"]
        assert buffering == {**buffering, "on": True, "inboxes": {"9": False}}
        paused = await http.post("/admin/pause", json={"by": "api user"}, headers=auth)
        assert paused.json()["pause"]["paused"] is True
        assert paused.json()["pause"]["paused_by"] == "api user"
        resumed = await http.post("/admin/resume", headers=auth)
        assert resumed.json()["pause"]["paused"] is False

        # Bad input: a 4xx with a JSON message, nothing changed.
        for method, path, body, status in [
            ("PUT", "/admin/flags/buffering", {"value": "off"}, 404),
            ("PUT", "/admin/flags/typing_indicators", {"value": "maybe"}, 422),
            ("PUT", "/admin/flags/typing_indicators", {"value": "default"}, 422),
            ("PUT", "/admin/flags/typing_indicators", {"value": "on", "inbox": "x"}, 422),
            ("PUT", "/admin/rollout/percent", {"percent": 150}, 422),
            ("PUT", "/admin/rollout/percent", {}, 422),
            ("PUT", "/admin/rollout/canaries/team:3", None, 422),
            ("PUT", "/admin/rollout/shadow", [1], 422),
            ("POST", "/admin/pause", {"by": ""}, 422),
            ("GET", "/admin/buffers/not-a-buffer", None, 422),
            ("GET", "/admin/buffers/00000000-0000-0000-0000-000000000000", None, 404),
        ]:
            answer = await http.request(method, path, json=body, headers=auth)
            assert answer.status_code == status, (path, answer.text)
            assert isinstance(answer.json()["error"], str), path
        not_json = await http.put(
            "/admin/rollout/percent",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        anonymous = await http.put("/admin/flags/typing_indicators", json={"value": "on"})
        assert anonymous.status_code == 401 and "error" in anonymous.json()
        after = (await http.get("/admin/controls", headers=auth)).json()
        assert after["rollout"]["percent"] == 25
        assert {f["name"]: f["on"] for f in after["flags"]}["typing_indicators"] is False
