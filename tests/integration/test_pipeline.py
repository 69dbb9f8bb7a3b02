"""One buffer through the pipeline, with in-memory Chatwoot and model, on both databases."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import Attachment, ConversationKey, InboundMessage, ModelDecision
from chatbuffer.domain.ports import PostedMessage, ReplyModel
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError, ModelError, TranscriptionError
from chatbuffer.flags import CachedControls
from chatbuffer.storage.controls import SqlControls
from chatbuffer.storage.tables import (
    bot_replies,
    buffer_processing_jobs,
    buffered_messages,
    feature_flags,
    message_buffer,
)
from chatbuffer.testing import (
    FakeClock,
    RecordingChatwoot,
    RecordingObserver,
    ScriptedReplyModel,
)
from chatbuffer.worker.model_gate import GatedReplyModel, ModelGate
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig

KEY = ConversationKey(3, 77)
POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)
LEASE = timedelta(seconds=10)
#: What a reserved send keeps the lease for (Chatwoot's timeout plus a margin), above the lease.
HOLD = timedelta(seconds=15)


def message(mid: int, text: str) -> InboundMessage:
    return InboundMessage(
        key=KEY,
        chatwoot_message_id=mid,
        content=text,
        kind="text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        sender={"name": "Ana"},
    )


def decision(confidence: float = 0.9, should: bool = True) -> ModelDecision:
    return ModelDecision(
        should_respond=should,
        content="Your order 4411 ships today.",
        confidence=confidence,
        intent="order_status",
    )


class Harness:
    def __init__(self, store, script, transcriber=None) -> None:
        self.store = store
        self.clock = FakeClock()
        self.chatwoot = RecordingChatwoot()
        self.model = ScriptedReplyModel(script)
        self.observer = RecordingObserver()
        self.pipeline = self.build(self.model, transcriber)

    def build(self, model, transcriber=None, max_size: int = POLICY.max_size) -> Pipeline:
        return Pipeline(
            history=self.store,
            ledger=self.store,
            flags=CachedControls(SqlControls(self.store.engine), self.clock),
            chatwoot=self.chatwoot,
            model=model,
            clock=self.clock,
            observer=self.observer,
            transcriber=transcriber,
            config=PipelineConfig(
                quality_threshold=0.7,
                typing_enabled=True,
                history_limit=10,
                retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
                policy=BufferPolicy(POLICY.quiet_period, POLICY.max_age, max_size),
            ),
        )

    async def burst(self, *texts: str) -> None:
        for i, text in enumerate(texts, start=1):
            await self.store.record_incoming(message(i, text), POLICY, self.clock.now())
            self.clock.advance(2)

    async def run_due(self) -> list:
        self.clock.advance(30)
        jobs = await self.store.claim_due(self.clock.now(), "w1", LEASE, 10)
        for job in jobs:
            await self.pipeline.process(job, "w1")
        return jobs

    async def table(self, table):
        async with self.store.engine.connect() as conn:
            return list((await conn.execute(select(table))).all())


async def test_a_burst_gets_one_reply_with_typing_around_it(store) -> None:
    h = Harness(store, lambda prompt: decision())
    await h.burst("hi", "I ordered last week", "order 4411")
    await h.run_due()
    [sent] = h.chatwoot.sent
    assert sent.content == "Your order 4411 ships today."
    assert not sent.private
    assert sent.content_attributes is not None and "chatbuffer" in sent.content_attributes
    assert h.chatwoot.typing == [(KEY, True), (KEY, False)]
    [prompt] = h.model.prompts
    lines = [line for line in prompt.user.splitlines() if line.startswith("- ")]
    assert lines == ["- hi", "- I ordered last week", "- order 4411"]
    [buf] = await h.table(message_buffer)
    assert (buf.status, buf.outcome) == ("completed", "replied")
    [reply] = await h.table(bot_replies)
    assert (reply.kind, reply.chatwoot_message_id) == ("reply", h.chatwoot.next_id)


async def test_low_confidence_leaves_a_private_note_and_opens_the_conversation(store) -> None:
    h = Harness(store, lambda prompt: decision(confidence=0.3))
    await h.burst("can I get a refund for something I broke?")
    await h.run_due()
    [note] = h.chatwoot.sent
    assert note.private
    assert "Your order 4411 ships today." in note.content and "0.30" in note.content
    assert h.chatwoot.statuses == [(KEY, "open")]
    assert h.chatwoot.typing[-1] == (KEY, False)
    [buf] = await h.table(message_buffer)
    assert buf.status == "completed" and buf.outcome.startswith("handed off")


async def test_model_choosing_silence_sends_nothing(store) -> None:
    h = Harness(store, lambda prompt: decision(should=False))
    await h.burst("ok thanks")
    await h.run_due()
    assert h.chatwoot.sent == []
    assert h.chatwoot.typing == [(KEY, True), (KEY, False)]
    [buf] = await h.table(message_buffer)
    assert buf.outcome.startswith("silent")


async def test_failures_are_recorded_retried_with_backoff_then_marked_failed(store) -> None:
    h = Harness(store, lambda prompt: ModelError("the model did not answer in time"))
    await h.burst("hello?")
    await h.run_due()
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.attempts, row.error_message) == (
        "scheduled",
        1,
        "the model did not answer in time",
    )
    assert row.scheduled_for == h.clock.now() + timedelta(seconds=2)
    h.clock.advance(2)
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(again, "w1")
    h.clock.advance(4)
    [third] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(third, "w1")
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.attempts) == ("failed", 3)
    [buf] = await h.table(message_buffer)
    assert buf.status == "failed"
    # Nothing was said to the customer; a human is told and the conversation is opened for them.
    [note] = h.chatwoot.sent
    assert note.private
    assert "after 3 attempts (the model did not answer in time)" in note.content
    assert h.chatwoot.statuses == [(KEY, "open")]
    assert "buffer_failed" in h.observer.names()


async def test_chatwoot_refusing_the_reply_keeps_the_buffer_open_for_retry(store) -> None:
    h = Harness(store, lambda prompt: decision())
    h.chatwoot.fail_with.append(ChatwootError("Chatwoot answered 500", retryable=True))
    await h.burst("hi")
    await h.run_due()
    [buf] = await h.table(message_buffer)
    assert buf.status == "closed"  # not completed: Chatwoot never accepted the reply
    h.clock.advance(2)
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(again, "w1")
    assert len(h.chatwoot.sent) == 1
    [buf] = await h.table(message_buffer)
    assert buf.status == "completed"


async def test_permanent_chatwoot_refusal_is_not_retried(store) -> None:
    h = Harness(store, lambda prompt: decision())
    h.chatwoot.fail_with.append(ChatwootError("Chatwoot answered 404", retryable=False))
    await h.burst("hi")
    await h.run_due()
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.attempts) == ("failed", 1)


async def test_human_takeover_while_the_model_writes_drops_the_reply(store) -> None:
    h: Harness

    def script(prompt: Prompt) -> ModelDecision:
        return decision()

    h = Harness(store, script)
    await h.burst("hi")
    h.clock.advance(30)
    [job] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.store.cancel_open(KEY, h.clock.now(), "a human agent answered")
    await h.pipeline.process(job, "w1")
    assert h.chatwoot.sent == []
    assert h.chatwoot.typing[-1] == (KEY, False)


@pytest.mark.parametrize(("flag", "expect_typing"), [("typing_indicators", False)])
async def test_typing_flag_switches_typing_off(store, flag: str, expect_typing: bool) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(feature_flags).where(feature_flags.c.flag_name == flag).values(is_enabled=False)
        )
    h = Harness(store, lambda prompt: decision())
    await h.burst("hi")
    await h.run_due()
    assert bool(h.chatwoot.typing) is expect_typing
    assert len(h.chatwoot.sent) == 1


class Transcripts:
    """A transcriber that answers from a table, or raises what it is given."""

    def __init__(self, answers: dict[str, str | Exception]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def transcribe(self, attachment: Attachment) -> str:
        assert attachment.data_url is not None
        self.calls.append(attachment.data_url)
        answer = self.answers[attachment.data_url]
        if isinstance(answer, Exception):
            raise answer
        return answer


def voice(mid: int, url: str, transcript: str | None = None) -> InboundMessage:
    return InboundMessage(
        key=KEY,
        chatwoot_message_id=mid,
        content=None,
        kind="audio",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        attachments=(Attachment(file_type="audio", data_url=url, transcript=transcript),),
    )


async def test_voice_notes_without_a_transcript_are_transcribed_once_and_kept(store) -> None:
    transcripts = Transcripts({"https://cw/a.ogg": "my parcel is late"})
    h = Harness(store, lambda prompt: decision(), transcripts)
    await h.store.record_incoming(message(1, "hi"), POLICY, h.clock.now())
    await h.store.record_incoming(voice(2, "https://cw/a.ogg"), POLICY, h.clock.now())
    await h.store.record_incoming(
        voice(3, "https://cw/b.ogg", transcript="already transcribed by Chatwoot"),
        POLICY,
        h.clock.now(),
    )
    await h.run_due()
    assert transcripts.calls == ["https://cw/a.ogg"]
    [prompt] = h.model.prompts
    lines = [line for line in prompt.user.splitlines() if line.startswith("- [voice")]
    assert lines[:2] == [
        "- [voice note] my parcel is late",
        "- [voice note] already transcribed by Chatwoot",
    ]
    stored = {r.chatwoot_message_id: r.attachments for r in await h.table(buffered_messages)}
    assert stored[2][0]["transcript"] == "my parcel is late"


async def test_an_untranscribable_voice_note_is_answered_with_a_marker(store) -> None:
    refused = TranscriptionError("not on the Chatwoot host", retryable=False)
    h = Harness(store, lambda prompt: decision(), Transcripts({"https://evil/x.ogg": refused}))
    await h.store.record_incoming(voice(1, "https://evil/x.ogg"), POLICY, h.clock.now())
    await h.run_due()
    [prompt] = h.model.prompts
    assert "- [voice note] (voice note; no transcript available)" in prompt.user
    assert len(h.chatwoot.sent) == 1


async def test_a_passing_transcription_failure_retries_the_buffer(store) -> None:
    transcripts = Transcripts({"https://cw/a.ogg": TranscriptionError("timed out")})
    h = Harness(store, lambda prompt: decision(), transcripts)
    await h.store.record_incoming(voice(1, "https://cw/a.ogg"), POLICY, h.clock.now())
    await h.run_due()
    assert h.model.prompts == []
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.error_message) == ("scheduled", "timed out")
    transcripts.answers["https://cw/a.ogg"] = "second time lucky"
    h.clock.advance(2)
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(again, "w1")
    assert "- [voice note] second time lucky" in h.model.prompts[0].user


async def test_a_transcription_endpoint_asking_to_wait_is_retried_after_that_wait(store) -> None:
    busy = TranscriptionError("the transcription endpoint answered 429", retry_after=9)
    transcripts = Transcripts({"https://cw/a.ogg": busy})
    h = Harness(store, lambda prompt: decision(), transcripts)
    await h.store.record_incoming(voice(1, "https://cw/a.ogg"), POLICY, h.clock.now())
    await h.run_due()
    [row] = await h.table(buffer_processing_jobs)
    # Retry-After (9 s) wins over the policy's 2 s first back-off.
    assert row.scheduled_for == h.clock.now() + timedelta(seconds=9)
    h.clock.advance(8)
    assert await h.store.claim_due(h.clock.now(), "w1", LEASE, 10) == []


class WritesDuringGeneration:
    """A model during whose call the contact sends another message."""

    def __init__(self, harness: Harness, text: str) -> None:
        self.harness = harness
        self.text = text
        self.prompts: list[Prompt] = []

    async def decide(self, prompt: Prompt) -> ModelDecision:
        self.prompts.append(prompt)
        if len(self.prompts) == 1:
            h = self.harness
            await h.store.record_incoming(message(99, self.text), POLICY, h.clock.now())
        return decision()


async def test_a_message_during_generation_drops_the_stale_reply_and_answers_once(
    store,
) -> None:
    h = Harness(store, lambda prompt: decision())
    model = WritesDuringGeneration(h, "oh and also the invoice")
    h.pipeline = h.build(model)
    await h.burst("hi", "order 4411")
    await h.run_due()
    assert h.chatwoot.sent == []  # the first answer would have ignored the invoice
    assert "buffer_superseded" in h.observer.names()
    await h.run_due()
    [reply] = h.chatwoot.sent
    assert reply.content == "Your order 4411 ships today."
    assert len(model.prompts) == 2
    lines = [line for line in model.prompts[1].user.splitlines() if line.startswith("- ")]
    assert lines == ["- hi", "- order 4411", "- oh and also the invoice"]
    statuses = sorted(b.status for b in await h.table(message_buffer))
    assert statuses == ["completed", "superseded"]


async def test_a_message_before_the_model_call_costs_no_model_call(store) -> None:
    h = Harness(store, lambda prompt: decision())
    await h.burst("hi")
    h.clock.advance(30)
    [job] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.store.record_incoming(message(2, "wait, one more thing"), POLICY, h.clock.now())
    await h.pipeline.process(job, "w1")
    assert h.model.prompts == []
    assert h.chatwoot.sent == []
    await h.run_due()
    [prompt] = h.model.prompts
    lines = [line for line in prompt.user.splitlines() if line.startswith("- ")]
    assert lines == ["- hi", "- wait, one more thing"]
    assert len(h.chatwoot.sent) == 1


async def test_no_merge_beyond_the_maximum_buffer_size(store) -> None:
    h = Harness(store, lambda prompt: decision())
    small = BufferPolicy(
        quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=2
    )
    await h.store.record_incoming(message(1, "one"), small, h.clock.now())
    h.clock.advance(30)
    [job] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.store.record_incoming(message(2, "two"), small, h.clock.now())
    await h.store.record_incoming(message(3, "three"), small, h.clock.now())
    assert (
        await h.store.supersede(
            job, "w1", h.clock.now(), BufferPolicy(POLICY.quiet_period, POLICY.max_age, 2)
        )
        is None
    )
    await h.build(h.model, max_size=2).process(
        job, "w1"
    )  # answered as it is: merging would make 3 > 2
    assert len(h.chatwoot.sent) == 1


async def test_a_flood_of_500_messages_a_minute_costs_at_most_one_model_call_per_full_buffer(
    store,
) -> None:
    h = Harness(store, lambda prompt: decision())
    for mid in range(1, 501):
        await h.store.record_incoming(message(mid, f"spam {mid}"), POLICY, h.clock.now())
        h.clock.advance(0.12)  # 500 messages in 60 s: the quiet period never comes
        for job in await h.store.claim_due(h.clock.now(), "w1", LEASE, 10):
            await h.pipeline.process(job, "w1")
    h.clock.advance(30)
    for job in await h.store.claim_due(h.clock.now(), "w1", LEASE, 10):
        await h.pipeline.process(job, "w1")
    assert len(h.model.prompts) <= 500 // POLICY.max_size
    assert len(h.chatwoot.sent) == len(h.model.prompts)
    # Every message was read by the model exactly once.
    seen = [
        line
        for prompt in h.model.prompts
        for line in prompt.user.split("Combined message content:\n", 1)[1]
        .split("\n\n", 1)[0]
        .splitlines()
        if line.startswith("- ")
    ]
    assert sorted(seen) == sorted(f"- spam {mid}" for mid in range(1, 501))
    assert max(b.message_count for b in await h.table(message_buffer)) <= POLICY.max_size


# -- idempotent send ------------------------------------------------------------------------


async def test_a_reply_chatwoot_took_without_answering_is_not_sent_again(store) -> None:
    h = Harness(store, lambda prompt: decision())
    h.chatwoot.lose_answers = 1  # Chatwoot creates the message, the client times out
    await h.burst("hi", "order 4411")
    await h.run_due()
    assert len(h.chatwoot.sent) == 1
    [reply] = await h.table(bot_replies)
    assert reply.chatwoot_message_id is None  # the intent, not yet confirmed
    h.clock.advance(2)
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(again, "w1")
    # The retry found the message by its marker, after the burst's last message.
    [sent] = h.chatwoot.sent
    [(_, marker, after)] = h.chatwoot.lookups
    assert (marker.buffer_id, marker.kind, after) == (again.buffer_id, "reply", 2)
    assert len(h.model.prompts) == 1
    [reply] = await h.table(bot_replies)
    assert reply.chatwoot_message_id == sent.message_id
    [buf] = await h.table(message_buffer)
    assert (buf.status, buf.outcome) == ("completed", "replied (resumed)")
    assert ("send_reconciled", {"found": True}) in [
        (name, {"found": f.get("found")}) for name, _, f in h.observer.events
    ]


async def test_a_worker_that_died_after_deciding_has_its_reply_posted_once_by_the_next(
    store,
) -> None:
    h = Harness(store, lambda prompt: decision())
    await h.burst("hi")
    h.clock.advance(30)
    [job] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    # w1 recorded its intent and died before (or while) posting.
    intent = PostedMessage("reply", "Hello Ana, it ships today.")
    assert await h.store.reserve_send(job, "w1", intent, h.clock.now(), hold=HOLD) == "send"
    # The reservation kept the lease for the POST's timeout; only then may another take over.
    h.clock.advance(HOLD - timedelta(milliseconds=1))
    assert await h.store.claim_due(h.clock.now(), "w2", LEASE, 10) == []
    h.clock.advance(timedelta(milliseconds=2))
    [taken] = await h.store.claim_due(h.clock.now(), "w2", LEASE, 10)
    await h.pipeline.process(taken, "w2")
    [sent] = h.chatwoot.sent
    assert sent.content == "Hello Ana, it ships today."
    assert h.model.prompts == []  # the decision was kept, not paid for again
    [reply] = await h.table(bot_replies)
    assert reply.chatwoot_message_id == sent.message_id


async def test_the_webhook_echo_confirms_a_send_so_the_retry_asks_chatwoot_nothing(
    store,
) -> None:
    h = Harness(store, lambda prompt: decision())
    h.chatwoot.lose_answers = 1
    await h.burst("hi")
    [job] = await h.run_due()
    [sent] = h.chatwoot.sent
    # Chatwoot's message_created echo of the reply reaches the intake.
    marker = Marker(job.buffer_id, "reply")
    assert await h.store.confirm_sent(KEY, marker, sent.message_id)
    assert not await h.store.confirm_sent(KEY, marker, sent.message_id + 1)  # first one wins
    h.clock.advance(2)
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(again, "w1")
    assert len(h.chatwoot.sent) == 1 and h.chatwoot.lookups == []
    [reply] = await h.table(bot_replies)
    assert reply.chatwoot_message_id == sent.message_id


async def test_a_handoff_whose_status_change_failed_does_not_repeat_the_note(store) -> None:
    h = Harness(store, lambda prompt: decision(confidence=0.2))
    await h.burst("I want to speak to a person")

    async def refuse_once(key, status):
        h.chatwoot.set_status = original  # type: ignore[method-assign]
        raise ChatwootError("Chatwoot answered 503", retryable=True)

    original = h.chatwoot.set_status
    h.chatwoot.set_status = refuse_once  # type: ignore[method-assign]
    await h.run_due()
    h.clock.advance(2)
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(again, "w1")
    [note] = h.chatwoot.sent
    assert note.private and h.chatwoot.statuses == [(KEY, "open")]
    assert h.chatwoot.lookups == []  # the note's id was recorded before the status change
    [buf] = await h.table(message_buffer)
    assert (buf.status, buf.outcome) == ("completed", "handed off (resumed)")


async def test_the_failure_note_is_recorded_with_its_chatwoot_id(store) -> None:
    h = Harness(store, lambda prompt: ModelError("the model answered 400", retryable=False))
    await h.burst("hello?")
    await h.run_due()
    [note] = h.chatwoot.sent
    assert note.content_attributes is not None
    assert note.content_attributes["chatbuffer"]["kind"] == "failure_note"
    [row] = await h.table(bot_replies)
    assert (row.kind, row.chatwoot_message_id) == ("failure_note", note.message_id)


# -- handing over when the bot gives up ------------------------------------------------------


async def retry_due(h: Harness) -> None:
    """Run the buffer's next attempt, whenever its back-off ends."""
    h.clock.advance(timedelta(minutes=10))
    [job] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(job, "w1")


async def test_when_chatwoot_itself_fails_the_hand_over_is_retried_until_a_human_has_it(
    store,
) -> None:
    down = ChatwootError("Chatwoot answered 502 to POST …/messages", retryable=True)
    h = Harness(store, lambda prompt: decision())
    # Chatwoot refuses the reply on all 3 attempts, then the first try at the hand-over note.
    h.chatwoot.fail_with.extend([down] * 4)
    await h.burst("hello?")
    await h.run_due()
    for _ in range(2):
        await retry_due(h)
    # Given up, but no human has been told yet: the buffer is not left as failed.
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.attempts) == ("scheduled", 3)
    assert "handing over to a human failed" in row.error_message
    assert h.chatwoot.sent == [] and h.chatwoot.statuses == []
    await retry_due(h)
    # Chatwoot is back: the note is posted and the conversation opened, without a model call.
    [note] = h.chatwoot.sent
    assert note.private and "after 3 attempts" in note.content
    assert h.chatwoot.statuses == [(KEY, "open")]
    assert len(h.model.prompts) == 1
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.attempts) == ("failed", 4)
    [buf] = await h.table(message_buffer)
    assert buf.status == "failed"
    # The reply Chatwoot never took stays an unconfirmed intent; the note has its id.
    posted = {(r.kind, r.chatwoot_message_id) for r in await h.table(bot_replies)}
    assert posted == {("reply", None), ("failure_note", note.message_id)}


async def test_a_hand_over_chatwoot_refuses_for_good_leaves_the_buffer_failed_for_operators(
    store,
) -> None:
    h = Harness(store, lambda prompt: ModelError("the model answered 400", retryable=False))
    h.chatwoot.fail_with.append(ChatwootError("Chatwoot answered 404", retryable=False))
    await h.burst("hello?")
    await h.run_due()
    [row] = await h.table(buffer_processing_jobs)
    assert row.status == "failed"
    assert row.error_message == (
        "the model answered 400; handing over to a human failed: Chatwoot answered 404"
    )
    assert h.chatwoot.sent == []


async def test_the_hand_over_is_tried_for_at_most_twice_the_attempts(store) -> None:
    down = ChatwootError("Chatwoot answered 503", retryable=True)
    h = Harness(store, lambda prompt: ModelError("the model answered 400", retryable=False))
    h.chatwoot.fail_with.extend([down] * 10)
    await h.burst("hello?")
    await h.run_due()
    for _ in range(5):
        await retry_due(h)
    [row] = await h.table(buffer_processing_jobs)
    assert (row.status, row.attempts) == ("failed", 6)  # 2 x MAX_PROCESSING_ATTEMPTS (3)
    assert len(h.model.prompts) == 1


class Asked:
    """Passes calls on to ``model``; ``event`` is set when the pipeline asks."""

    def __init__(self, model: ReplyModel) -> None:
        self.model = model
        self.event = asyncio.Event()

    async def decide(self, prompt: Prompt) -> ModelDecision:
        self.event.set()
        return await self.model.decide(prompt)


async def test_a_model_429_retries_its_buffer_and_holds_every_other_buffers_model_call(
    store,
) -> None:
    refusals = [ModelError("the model endpoint answered 429", retry_after=3, rate_limited=True)]
    h = Harness(store, lambda prompt: refusals.pop() if refusals else decision())
    gate = ModelGate(h.clock, max_concurrency=10)
    asked = Asked(GatedReplyModel(h.model, gate))
    h.pipeline = h.build(asked)
    other = ConversationKey(3, 78)
    await h.store.record_incoming(message(1, "first"), POLICY, h.clock.now())
    await h.store.record_incoming(replace(message(2, "second"), key=other), POLICY, h.clock.now())
    h.clock.advance(30)
    refused, waiting = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    await h.pipeline.process(refused, "w1")
    asked.event.clear()
    second = asyncio.create_task(h.pipeline.process(waiting, "w1"))
    await asyncio.wait_for(asked.event.wait(), timeout=10)
    for _ in range(20):
        await asyncio.sleep(0)
    # The other buffer's model call waits out the provider's Retry-After instead of being refused.
    assert (len(h.model.prompts), h.chatwoot.sent) == (1, [])
    h.clock.advance(3)
    await second
    assert [s.key for s in h.chatwoot.sent] == [other]
    assert len(h.model.prompts) == 2
    # The refused buffer is an ordinary failed attempt, due again after the same wait.
    [again] = await h.store.claim_due(h.clock.now(), "w1", LEASE, 10)
    assert again.buffer_id == refused.buffer_id
    await h.pipeline.process(again, "w1")
    assert [s.key for s in h.chatwoot.sent] == [other, KEY]
