"""Replies that read well on WhatsApp: a long one in ordered parts, each once, with a typing
pause before each part after the first; Markdown rewritten where the flag says; the burst's
assessment kept with the buffer. In memory, on the fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from chatbuffer.domain.control import inbox_flag_name
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.marker import read
from chatbuffer.domain.model import Assessment, ConversationKey, ModelDecision
from chatbuffer.domain.ports import ClaimedJob
from chatbuffer.testing import Sent
from tests.unit.worker.world import KEY, LEASE, QUIET, World, settle

FIRST, SECOND, THIRD = "a" * 90, "b " * 20 + "end.", "c" * 90
LONG = f"{FIRST}\n\n{SECOND}\n\n{THIRD}"


def saying(content: str, *, should_respond: bool = True) -> ModelDecision:
    return ModelDecision(
        should_respond=should_respond,
        content=content,
        confidence=0.9,
        intent="order_status",
        actions=("check_order",),
    )


def parts_of(sent: list[Sent]) -> list[tuple[int, str]]:
    """Each public message's part number (from its marker) and text, in the order posted."""
    found = []
    for message in sent:
        marker = read(message.content_attributes, private=message.private)
        assert marker is not None
        found.append((marker.part, message.content))
    return found


async def run(w: World, job: ClaimedJob, owner: str = "w1") -> None:
    """Process ``job``, letting the fake clock run through the typing pauses."""
    task = asyncio.create_task(w.pipeline.process(job, owner))
    while not task.done():
        await settle()
        w.clock.advance(0.1)
    await task


async def test_a_long_reply_goes_out_in_ordered_parts_each_confirmed() -> None:
    w = World(reply_max_chars=100)
    w.model.answers = [saying(LONG)]
    await w.say("where is my order?")
    w.clock.advance(QUIET)
    await run(w, await w.claim())
    assert parts_of(w.chatwoot.sent) == [(0, FIRST), (1, SECOND), (2, THIRD)]
    assert all(len(s.content) <= 100 and not s.private for s in w.chatwoot.sent)
    recorded = sorted(w.store.replies, key=lambda r: r.part)
    assert [(r.part, r.content, r.chatwoot_message_id) for r in recorded] == [
        (i, s.content, s.message_id) for i, s in enumerate(w.chatwoot.sent)
    ]
    assert w.statuses() == ["completed"]
    assert len(w.model.prompts) == 1


async def test_each_further_part_waits_a_pause_that_grows_with_it_up_to_the_cap() -> None:
    w = World(
        reply_max_chars=100,
        pause_per_char=timedelta(milliseconds=10),
        pause_max=timedelta(seconds=0.7),
    )
    w.model.answers = [saying(LONG)]
    await w.say("where is my order?")
    w.clock.advance(QUIET)
    task = asyncio.create_task(w.pipeline.process(await w.claim(), "w1"))
    await settle()
    assert len(w.chatwoot.sent) == 1
    # The second part has 44 characters: 0.44 s of "typing…".
    w.clock.advance(0.4)
    await settle()
    assert len(w.chatwoot.sent) == 1
    w.clock.advance(0.05)
    await settle()
    assert len(w.chatwoot.sent) == 2
    # The third has 90: 0.9 s, capped at 0.7 s.
    w.clock.advance(0.65)
    await settle()
    assert len(w.chatwoot.sent) == 2
    w.clock.advance(0.05)
    await settle()
    assert len(w.chatwoot.sent) == 3
    await task
    # "typing…" shows during each pause, and is turned off at the end.
    assert w.chatwoot.typing == [(KEY, True), (KEY, True), (KEY, True), (KEY, False)]


async def test_a_part_that_landed_unconfirmed_is_found_not_posted_again() -> None:
    w = World(reply_max_chars=100)
    w.model.answers = [saying(LONG)]

    async def slow_second() -> None:
        # Chatwoot takes the second part but its answer never arrives (a timeout).
        if len(w.chatwoot.sent) == 1:
            w.chatwoot.lose_answers = 1

    w.chatwoot.while_posting = slow_second
    await w.say("where is my order?")
    w.clock.advance(QUIET)
    await run(w, await w.claim())
    assert [
        r.chatwoot_message_id is not None for r in sorted(w.store.replies, key=lambda r: r.part)
    ] == [True, False, False]
    w.chatwoot.while_posting = None
    w.clock.advance(5)  # the retry's back-off
    await run(w, await w.claim())
    assert parts_of(w.chatwoot.sent) == [(0, FIRST), (1, SECOND), (2, THIRD)]
    # The first part was confirmed: only the others were looked for, and only the third posted.
    assert [marker.part for _, marker, _ in w.chatwoot.lookups] == [1, 2]
    assert all(r.chatwoot_message_id is not None for r in w.store.replies)
    assert w.statuses() == ["completed"]
    assert len(w.model.prompts) == 1


async def test_a_worker_that_dies_between_parts_leaves_only_the_rest_to_the_next() -> None:
    w = World(reply_max_chars=100, pause_per_char=timedelta(milliseconds=10))
    w.model.answers = [saying(LONG)]
    await w.say("where is my order?")
    w.clock.advance(QUIET)
    task = asyncio.create_task(w.pipeline.process(await w.claim(), "w1"))
    await settle()
    assert len(w.chatwoot.sent) == 1
    task.cancel()  # the process dies in the pause before the second part
    await asyncio.gather(task, return_exceptions=True)
    w.clock.advance(LEASE + timedelta(seconds=15))
    await run(w, await w.claim("w2"), "w2")
    assert parts_of(w.chatwoot.sent) == [(0, FIRST), (1, SECOND), (2, THIRD)]
    assert [marker.part for _, marker, _ in w.chatwoot.lookups] == [1]
    assert w.statuses() == ["completed"]
    assert len(w.model.prompts) == 1


async def test_once_a_part_is_out_the_rest_follow_even_if_the_contact_writes_again() -> None:
    w = World(reply_max_chars=100, pause_per_char=timedelta(milliseconds=10))
    w.model.answers = [saying(LONG), saying("short")]
    await w.say("where is my order?")
    w.clock.advance(QUIET)
    task = asyncio.create_task(w.pipeline.process(await w.claim(), "w1"))
    await settle()
    assert len(w.chatwoot.sent) == 1
    await w.say("hello?")
    while not task.done():
        await settle()
        w.clock.advance(0.1)
    assert parts_of(w.chatwoot.sent) == [(0, FIRST), (1, SECOND), (2, THIRD)]
    assert w.statuses() == ["completed", "active"]


async def test_markdown_becomes_whatsapp_formatting_only_in_the_inboxes_with_the_flag() -> None:
    w = World()
    w.control_rows.values[inbox_flag_name(Flag.RESPONSE_QUALITY_ENHANCEMENT, 7)] = "on"
    w.model.answers = [saying("## Your order\n\n**Shipped** today, *tracking* soon.")]
    other = ConversationKey(KEY.account_id, KEY.conversation_id + 1)
    await w.say("where is my order?", inbox_id=7)
    await w.say("where is mine?", key=other, inbox_id=8)
    w.clock.advance(QUIET)
    for job in await w.store.claim_due(w.clock.now(), "w1", LEASE, 10):
        await run(w, job)
    by_key = {s.key: s.content for s in w.chatwoot.sent}
    assert by_key[KEY] == "*Your order*\n\n*Shipped* today, _tracking_ soon."
    assert by_key[other] == "## Your order\n\n**Shipped** today, *tracking* soon."


async def test_what_the_model_said_and_the_urgency_are_kept_with_the_buffer() -> None:
    w = World()
    w.model.answers = [saying("nothing to add", should_respond=False)]
    await w.say("URGENT!!", "my card was charged twice", "help", every=5)
    w.clock.advance(QUIET)
    job = await w.claim()
    await run(w, job)
    assert w.chatwoot.sent == []
    assert w.store.assessments[job.buffer_id] == Assessment(
        urgency=9,
        intent="order_status",
        actions=("check_order",),
        confidence=0.9,
        should_respond=False,
    )
    # The model was shown the same urgency.
    assert "Urgency (1 calm to 10 critical, from the wording and pace): 9." in (
        w.model.prompts[0].user
    )
