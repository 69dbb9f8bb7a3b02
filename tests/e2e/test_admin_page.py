"""The admin page in a real browser (Debian's Chromium, driven by Playwright) against ``serve``.

An operator signs in with the admin token, watches a buffer count down after a webhook, sees the
reply's turn appear, and replays a failed buffer into one reply; a wrong token is refused.

CI installs Chromium and sets ``CHATBUFFER_REQUIRE_BROWSER=1``, so there a missing browser fails
instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.conftest import ACCOUNT, Service, free_port, simulators

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "e2e-admin-page-token-5f0c2a9d"
WINDOW_MS = 4_000


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CHATBUFFER_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium is required (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/admin")
    await page.fill("#token", token)
    await page.click("button[type=submit]")


async def test_an_operator_watches_a_burst_and_replays_a_failed_buffer(
    browser: Browser, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'admin.db'}"
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(
            db_url, ADMIN_TOKEN=ADMIN_TOKEN, MESSAGE_BUFFER_DURATION_MS=str(WINDOW_MS)
        )
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        world = sims.world(service)
        page = await browser.new_page()
        try:
            # A wrong token is refused, and the page shows nothing of the conversations.
            await sign_in(page, service.url, "not-the-token-000000")
            await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
            assert await page.locator("#panel").count() == 0

            await sign_in(page, service.url, ADMIN_TOKEN)
            await expect(
                page.get_by_role("heading", name="Collecting messages (0)")
            ).to_be_visible()

            await world.say(71, "is the shop open on sunday")
            # The buffer shows up within the page's one-second refresh and counts down.
            countdown = page.locator("#open tr[data-buffer] .countdown")
            await expect(countdown).to_have_count(1, timeout=3_000)
            first = _seconds(await countdown.inner_text())
            await page.wait_for_timeout(700)
            second = _seconds(await countdown.inner_text())
            assert 0 < second < first <= WINDOW_MS / 1000, (first, second)

            # Once answered, the turn is listed with its outcome.
            [reply] = await world.wait_for_replies(71, 1, WINDOW_MS / 1000 + 3)
            recent = page.locator("#recent tr[data-buffer]")
            await expect(recent).to_have_count(1, timeout=3_000)
            await expect(recent).to_contain_text(f"{ACCOUNT}/71")
            await expect(recent).to_contain_text("replied")
            buffer_id = reply["content_attributes"]["chatbuffer"]["buffer_id"]
            await expect(recent).to_contain_text(buffer_id)

            # A buffer the model refused for good is listed as failed; Replay answers it once.
            sims.model.fail_next(400)
            await world.say(72, "my parcel never came")
            failed = page.locator("#failed tr[data-buffer]")
            await expect(failed).to_have_count(1, timeout=(WINDOW_MS + 6_000))
            await expect(failed).to_contain_text("answered 400")
            assert world.replies(72) == []
            await failed.get_by_role("button", name="Replay").click()
            await expect(page.locator("#replayed")).to_contain_text("scheduled")
            assert len(await world.wait_for_replies(72, 1, 10)) == 1
            await expect(page.locator("#failed tr[data-buffer]")).to_have_count(0, timeout=3_000)

            # Signing out ends the session: the panel answers 401 without the cookie.
            await page.click("text=Sign out")
            await expect(page.locator("#token")).to_be_visible()
            answer = await page.request.get(f"{service.url}/admin/panel")
            assert answer.status == 401
        finally:
            await page.close()
            await service.stop()


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+) s", text.strip())
    assert match, text
    return float(match.group(1))
