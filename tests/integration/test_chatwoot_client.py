"""``ChatwootClient`` against the Chatwoot simulator over loopback HTTP, every call checked
against Chatwoot's swagger: posting with a marker, and finding a posted message again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from chatbuffer.chatwoot.client import ChatwootClient
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import ConversationKey
from chatbuffer.errors import ChatwootError
from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.server import serve_in_background
from tests.support.swagger import load_validator

TOKEN = "client-test-token-5b2e"
KEY = ConversationKey(1, 1532)


@dataclass
class Served:
    chatwoot: ChatwootSimulator
    client: ChatwootClient
    token_owner: str


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """``indirect`` parameter: who owns the token, ``agent_bot`` (default) or ``user``."""
    owner = getattr(request, "param", "agent_bot")
    chatwoot = ChatwootSimulator(
        api_token=TOKEN, validator=load_validator(), user_token=owner == "user"
    )
    url, stop = await serve_in_background(chatwoot.app)
    client = ChatwootClient(base_url=url, api_token=TOKEN, timeout_s=0.5)
    try:
        yield Served(chatwoot, client, owner)
    finally:
        await client.aclose()
        await stop()
    assert chatwoot.violations == []


@pytest.mark.parametrize("served", ["user", "agent_bot"], indirect=True)
async def test_a_posted_reply_is_found_by_its_marker(served: Served) -> None:
    mine = Marker(uuid.uuid4(), "reply")
    message_id = await served.client.send_message(
        KEY, "Hi Ana!", content_attributes=mine.attributes()
    )
    assert await served.client.find_marked(KEY, mine, after_message_id=500) == message_id
    other = Marker(uuid.uuid4(), "reply")
    assert await served.client.find_marked(KEY, other, after_message_id=500) is None
    gets = [
        (r.path.rsplit("/", 1)[-1], r.query) for r in served.chatwoot.requests if r.method == "GET"
    ]
    if served.token_owner == "user":
        assert gets == [("messages", {"after": "500"})] * 2
    else:
        # The bot token is refused the list, then reads the conversation's last message.
        assert gets == [("messages", {"after": "500"}), ("1532", {})] * 2


@pytest.mark.parametrize("served", ["user"], indirect=True)
async def test_only_messages_after_the_burst_count(served: Served) -> None:
    mine = Marker(uuid.uuid4(), "handoff_note")
    note_id = await served.client.send_message(
        KEY, "needs a human", private=True, content_attributes=mine.attributes()
    )
    assert await served.client.find_marked(KEY, mine, after_message_id=note_id - 1) == note_id
    assert await served.client.find_marked(KEY, mine, after_message_id=note_id) is None


async def test_a_reply_accepted_after_the_client_gave_up_is_found(served: Served) -> None:
    mine = Marker(uuid.uuid4(), "reply")
    served.chatwoot.delay_next("/messages", 1.0)
    with pytest.raises(ChatwootError, match="in time"):
        await served.client.send_message(KEY, "Hi Ana!", content_attributes=mine.attributes())
    await wait_until(lambda: len(served.chatwoot.replies(1, 1532)) == 1)
    [reply] = served.chatwoot.replies(1, 1532)
    assert await served.client.find_marked(KEY, mine, after_message_id=None) == reply["id"]


async def test_errors_carry_the_status_and_never_the_token(served: Served) -> None:
    served.chatwoot.fail_next("/conversations/1532", status=502)
    with pytest.raises(ChatwootError) as caught:
        await served.client.find_marked(KEY, Marker(uuid.uuid4(), "reply"), after_message_id=None)
    assert caught.value.status == 502 and caught.value.retryable
    assert TOKEN not in str(caught.value)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")
