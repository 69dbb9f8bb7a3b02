"""One buffer through the pipeline, on the in-memory store and the fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from chatbuffer.errors import ModelError
from tests.unit.worker.world import (
    KEY,
    LEASE,
    QUIET,
    REPLY,
    World,
    answer,
    burst_lines,
    settle,
)


async def test_a_burst_is_answered_once_with_all_its_messages() -> None:
    w = World()
    await w.say("hi", "I ordered last week", "order 4411")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    [sent] = w.chatwoot.sent
    assert (sent.content, sent.private) == (REPLY, False)
    [prompt] = w.model.prompts
    assert burst_lines(prompt) == ["hi", "I ordered last week", "order 4411"]
    assert w.chatwoot.typing == [(KEY, True), (KEY, False)]
    assert w.statuses() == ["completed"]
    [reply] = w.store.replies
    assert reply.chatwoot_message_id == sent.message_id


async def test_a_model_error_is_retried_after_its_back_off_then_answered() -> None:
    w = World()
    w.model.answers = [
        ModelError("the model did not answer in time"),
        ModelError("again"),
        answer(),
    ]
    await w.say("hello?")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    [job] = w.store.jobs.values()
    assert (job.status, job.attempts, job.error_message) == (
        "scheduled",
        1,
        "the model did not answer in time",
    )
    assert job.scheduled_for == w.clock.now() + timedelta(seconds=2)
    assert w.statuses() == ["closed"]
    w.clock.advance(2)
    await w.pipeline.process(await w.claim(), "w1")
    # The back-off doubles with each failed attempt.
    assert (job.attempts, job.error_message) == (2, "again")
    assert job.scheduled_for == w.clock.now() + timedelta(seconds=4)
    w.clock.advance(4)
    await w.pipeline.process(await w.claim(), "w1")
    [sent] = w.chatwoot.sent
    assert sent.content == REPLY
    assert len(w.model.prompts) == 3
    assert (job.status, w.statuses()) == ("completed", ["completed"])
    assert w.observer.names().count("attempt_failed") == 2


async def test_a_message_while_the_model_writes_supersedes_the_stale_reply() -> None:
    w = World()
    await w.say("hi", "where is my order")
    w.clock.advance(QUIET)
    w.model.hold()
    writing = asyncio.create_task(w.pipeline.process(await w.claim(), "w1"))
    await settle()
    await w.say("it is order 4411")
    w.model.release()
    await writing
    assert w.chatwoot.sent == []
    assert w.statuses() == ["superseded", "active"]
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    [sent] = w.chatwoot.sent
    assert sent.content == REPLY
    assert burst_lines(w.model.prompts[-1]) == ["hi", "where is my order", "it is order 4411"]
    assert w.statuses() == ["superseded", "completed"]


async def test_a_human_taking_over_while_the_model_writes_drops_the_reply() -> None:
    w = World()
    await w.say("can I speak to a person?")
    w.clock.advance(QUIET)
    w.model.hold()
    writing = asyncio.create_task(w.pipeline.process(await w.claim(), "w1"))
    await settle()
    pause = w.clock.now() + timedelta(hours=1)
    assert await w.store.cancel_open(KEY, w.clock.now(), "a human agent answered", pause) == 1
    w.model.release()
    await writing
    assert w.chatwoot.sent == []
    assert w.chatwoot.typing[-1] == (KEY, False)
    assert w.statuses() == ["cancelled"]
    assert w.store.replies == []


async def test_a_worker_that_lost_its_lease_does_not_reply_over_the_new_holder() -> None:
    w = World()
    await w.say("hi")
    w.clock.advance(QUIET)
    w.model.hold()
    stalled = asyncio.create_task(w.pipeline.process(await w.claim("w1"), "w1"))
    await settle()
    w.clock.advance(LEASE + timedelta(milliseconds=1))
    taken = await w.claim("w2")
    assert taken.attempts == 2
    w.model.release()
    await stalled
    assert w.chatwoot.sent == []
    await w.pipeline.process(taken, "w2")
    [sent] = w.chatwoot.sent
    assert sent.content == REPLY
    assert w.statuses() == ["completed"]
