"""``chatbuffer doctor``'s Chatwoot and secret checks read Chatwoot's answers as an operator
needs them: which setting is wrong and why, never its value."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from chatbuffer import doctor
from chatbuffer.domain.model import ConversationKey
from chatbuffer.settings import load_settings

TOKEN = "a-bot-token-value"
TARGET = ConversationKey(7, 31)


def answering(status: int, body: Any) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/api/v1/accounts/7/conversations/31"
        assert request.headers["api_access_token"] == TOKEN
        return httpx2.Response(status, json=body)

    return httpx2.MockTransport(handle)


# Chatwoot's own words for each refusal (render_unauthorized in its controllers).
@pytest.mark.parametrize(
    ("status", "body", "ok", "says"),
    [
        (200, {"id": 31}, True, "accepts CHATWOOT_API_TOKEN for account 7"),
        (404, {"error": "Resource could not be found"}, True, "accepts"),
        (401, {"error": "Invalid Access Token"}, False, "not a token it knows"),
        (
            401,
            {"error": "Bot is not authorized to access this account"},
            False,
            "valid but may not act in account 7",
        ),
        (
            401,
            {"error": "Access to this endpoint is not authorized for bots"},
            True,
            "does not let bots show a conversation",
        ),
        (403, {"error": "plan"}, False, "a plan without API access"),
        (502, {}, False, "answered 502"),
    ],
)
async def test_the_chatwoot_check_says_which_refusal_it_met(
    status: int, body: Any, ok: bool, says: str
) -> None:
    settings = load_settings(
        chatwoot_base_url="https://chatwoot.example.com", chatwoot_api_token=TOKEN
    )
    check = await doctor._chatwoot(settings, TARGET, answering(status, body))
    assert check.ok is ok
    assert says in check.detail
    assert TOKEN not in check.line()


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("x" * 24, True),
        (None, False),
        ("short", False),
        ("with a space inside it!", False),
        (" " + "y" * 24, False),
    ],
)
def test_the_secret_check(secret: str | None, ok: bool) -> None:
    check = doctor._webhook_secret(load_settings(chatwoot_webhook_secret=secret))
    assert check.ok is ok
    if secret:
        assert secret.strip() not in check.line()


def test_version_is_the_installed_package_s(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from chatbuffer import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"chatbuffer {version('chatbuffer')}"
