"""``chatbuffer doctor`` and ``status`` against the simulators, and a refused token at run time.

The Chatwoot simulator refuses any token but its own (401) and checks every request against
Chatwoot's OpenAPI spec; the model simulator here accepts one key only.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatbuffer.simulator import payloads
from tests.e2e.conftest import (
    ACCOUNT,
    SECRET,
    TOKEN,
    Service,
    Simulators,
    free_port,
    simulators,
    wait_until,
)

pytestmark = pytest.mark.e2e

MODEL_KEY = "sk-the-right-model-key"


@dataclass
class Ran:
    code: int
    out: str


async def doctor(env: dict[str, str], *args: str) -> Ran:
    """``chatbuffer doctor`` as a subprocess, without blocking the simulators' event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatbuffer",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode())


@pytest.fixture
async def sims() -> AsyncIterator[Simulators]:
    async with simulators(free_port(), model_api_key=MODEL_KEY) as both:
        yield both


def lines_of(ran: Ran) -> dict[str, str]:
    """Each check's line, by its name."""
    found = {}
    for line in ran.out.splitlines():
        verdict, _, rest = line.partition(" ")
        name, _, _ = rest.strip().partition(":")
        found[name] = verdict
    return found


async def test_doctor_passes_a_good_setup_and_names_a_wrong_token_or_key(
    sims: Simulators, db_url: str
) -> None:
    env = sims.service_env(db_url, OPENAI_API_KEY=MODEL_KEY, CHATWOOT_ACCOUNT_ID=str(ACCOUNT))

    good = await doctor(env, "doctor")
    assert good.code == 0, good.out
    assert lines_of(good) == {
        "database": "ok",
        "chatwoot": "ok",
        "model": "ok",
        "webhook secret": "ok",
    }, good.out
    # The token was tried on the account, with a call Chatwoot's spec has.
    [asked] = [r for r in sims.chatwoot.requests if r.method == "GET"]
    assert asked.path == f"/api/v1/accounts/{ACCOUNT}/conversations/1"

    wrong_token = "not-the-bot-token"
    bad_chatwoot = await doctor({**env, "CHATWOOT_API_TOKEN": wrong_token}, "doctor")
    assert bad_chatwoot.code == 1, bad_chatwoot.out
    assert lines_of(bad_chatwoot)["chatwoot"] == "FAIL"
    assert lines_of(bad_chatwoot)["model"] == "ok"
    assert (
        "refused CHATWOOT_API_TOKEN for account 1 (401): not a token it knows" in bad_chatwoot.out
    )
    assert wrong_token not in bad_chatwoot.out

    wrong_key = "sk-a-wrong-model-key"
    bad_model = await doctor({**env, "OPENAI_API_KEY": wrong_key}, "doctor")
    assert bad_model.code == 1, bad_model.out
    assert lines_of(bad_model)["model"] == "FAIL"
    assert lines_of(bad_model)["chatwoot"] == "ok"
    assert "the model endpoint refused OPENAI_API_KEY (401)" in bad_model.out
    for secret in (wrong_key, MODEL_KEY, TOKEN, SECRET):
        assert secret not in bad_model.out + good.out
    # No model call was made by any of them: GET /models costs nothing.
    assert sims.model.requests == []


async def test_doctor_fails_a_short_webhook_secret_and_an_unmigrated_database(
    sims: Simulators, tmp_path: Path
) -> None:
    env = sims.service_env(
        f"sqlite:///{tmp_path / 'fresh.db'}",
        OPENAI_API_KEY=MODEL_KEY,
        CHATWOOT_WEBHOOK_SECRET="short",
    )
    ran = await doctor(env, "doctor", "--account", str(ACCOUNT))
    assert ran.code == 1, ran.out
    assert lines_of(ran) == {
        "database": "FAIL",
        "chatwoot": "ok",
        "model": "ok",
        "webhook secret": "FAIL",
    }, ran.out
    assert "run `chatbuffer migrate` first" in ran.out
    assert "short" not in ran.out.replace("shorter", "")


async def test_a_refused_chatwoot_token_stops_model_calls_for_the_account(
    sims: Simulators, db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    sims.chatwoot.webhook_url = f"http://127.0.0.1:{port}/webhooks/chatwoot"
    env = sims.service_env(
        db_url,
        OPENAI_API_KEY=MODEL_KEY,
        # A token Chatwoot refuses; no typing call, so the model is asked once before the
        # refusal of its reply is met.
        CHATWOOT_API_TOKEN="a-revoked-bot-token",
        CHATWOOT_TYPING_INDICATOR_ENABLED="false",
        CREDENTIAL_BACKOFF_MS="60000",
    )
    service = Service(env=env, port=port, log=tmp_path / "service.log")
    await service.start()
    try:
        await say(sims, conversation=41, message_id=9001, text="first burst")
        # Answered by the model, then refused by Chatwoot when posted.
        assert await wait_until(lambda: len(sims.model.requests) == 1 and _posted(sims), 5)

        # The next burst of the account: due, taken, and put back without a model call.
        await say(sims, conversation=42, message_id=9002, text="second burst")
        assert await wait_until(lambda: "model calls are paused" in service.log.read_text(), 5), (
            service.log.read_text()
        )
        assert len(sims.model.requests) == 1
        errors = [
            line
            for line in service.log.read_text().splitlines()
            if "answered 401 to chatbuffer's credentials" in line
        ]
        assert len(errors) == 1, errors
        assert "for account 1 " in errors[0]
    finally:
        await service.stop()


async def say(sims: Simulators, *, conversation: int, message_id: int, text: str) -> None:
    delivery = await sims.chatwoot.send_webhook(
        payloads.incoming_text(
            account_id=ACCOUNT,
            conversation_id=conversation,
            message_id=message_id,
            content=text,
            created_at=datetime.now(UTC),
        )
    )
    assert delivery.status_code == 200, delivery


def _posted(sims: Simulators) -> bool:
    return any(r.path.endswith("/messages") for r in sims.chatwoot.requests)
