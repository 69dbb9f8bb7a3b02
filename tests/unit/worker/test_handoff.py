"""Hand-offs in the pipeline, on the in-memory store and the fake clock: control words, the
model's ``handoff`` action, and a conversation the bot must stay out of."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chatbuffer.domain import control_words, shadow
from chatbuffer.domain.model import ConversationKey, ModelDecision
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError
from chatbuffer.flags import CachedControls
from chatbuffer.testing import MemoryBotStates, MemoryControls, RecordingChatwoot
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from tests.unit.worker.world import KEY, POLICY, QUIET, REPLY, World, answer

WORDS = control_words.keywords(", ".join(control_words.DEFAULT_KEYWORDS))


@dataclass
class FlakyStatusChatwoot(RecordingChatwoot):
    """``toggle_status`` fails ``status_failures`` times, then works."""

    status_failures: int = 0
    status_calls: list[str] = field(default_factory=list)

    async def set_status(self, key: ConversationKey, status: str) -> None:
        self.status_calls.append(status)
        if self.status_failures:
            self.status_failures -= 1
            raise ChatwootError("Chatwoot answered 503", retryable=True)
        await super().set_status(key, status)


def world(chatwoot: RecordingChatwoot | None = None) -> tuple[World, MemoryBotStates]:
    w = World()
    states = MemoryBotStates(w.store)
    if chatwoot is not None:
        w.chatwoot = chatwoot
    w.pipeline = Pipeline(
        history=w.store,
        ledger=w.store,
        flags=CachedControls(MemoryControls(), w.clock),
        chatwoot=w.chatwoot,
        model=w.model,
        clock=w.clock,
        observer=w.observer,
        bot_states=states,
        config=PipelineConfig(
            quality_threshold=0.7,
            typing_enabled=True,
            history_limit=10,
            retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
            policy=POLICY,
            handoff_keywords=WORDS,
        ),
    )
    return w, states


async def test_a_control_word_hands_the_burst_off_without_the_model_or_typing() -> None:
    w, states = world()
    await w.say("hi", "my order never came", "ATENDENTE!")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")

    assert w.model.prompts == []
    assert w.chatwoot.typing == []
    [note] = w.chatwoot.sent
    assert note.private
    assert "'atendente'" in note.content and "control_word" in note.content
    assert "hi / my order never came / ATENDENTE!" in note.content
    assert w.chatwoot.statuses == [(KEY, "open")]
    assert w.statuses() == ["completed"]
    state = await states.state(KEY, w.clock.now())
    assert (state.mode, state.reason) == ("handed_off", "handed off: control_word")
    assert "handoff" in w.observer.names()


async def test_a_failed_toggle_is_retried_without_a_second_note() -> None:
    chatwoot = FlakyStatusChatwoot(status_failures=1)
    w, states = world(chatwoot)
    await w.say("humano")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    assert w.statuses() == ["closed"]
    assert (await states.state(KEY, w.clock.now())).mode == "handed_off"

    w.clock.advance(2)
    await w.pipeline.process(await w.claim(), "w1")
    assert len(chatwoot.sent) == 1
    assert chatwoot.status_calls == ["open", "open"]
    assert w.statuses() == ["completed"]


async def test_a_handed_off_conversation_stores_the_burst_but_never_acts() -> None:
    w, states = world()
    await states.hand_off(KEY, "handed off: low confidence", w.clock.now())
    await w.say("are you still there?", "hello??")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")

    assert (w.chatwoot.sent, w.chatwoot.typing, w.chatwoot.statuses) == ([], [], [])
    assert w.model.prompts == []
    assert w.statuses() == ["completed"]
    assert [m.message.content for m in w.store.messages] == ["are you still there?", "hello??"]

    # Handed back: the next burst is answered, and reads the kept one as history.
    assert await states.resume(KEY, w.clock.now(), by_operator=False)
    await w.say("ok, one more question")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    [sent] = w.chatwoot.sent
    assert sent.content == REPLY
    assert "hello??" in w.model.prompts[-1].user


async def test_off_keeps_the_bot_out_too() -> None:
    w, states = world()
    await states.turn_off(KEY, "vip", w.clock.now())
    await w.say("hi")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    assert w.chatwoot.sent == [] and w.model.prompts == []
    assert w.statuses() == ["completed"]


async def test_the_models_handoff_action_posts_its_reply_then_the_note() -> None:
    w, states = world()
    w.model.answers = [
        ModelDecision(True, "A colleague will help you.", 0.95, "refund", actions=("handoff",))
    ]
    await w.say("I want a refund")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")

    reply, note = w.chatwoot.sent
    assert (reply.content, reply.private) == ("A colleague will help you.", False)
    assert note.private and "the model asked for a human (intent: refund)" in note.content
    assert "The contact wrote: I want a refund" in note.content
    assert w.chatwoot.statuses == [(KEY, "open")]
    assert sorted(r.kind for r in w.store.replies) == ["handoff_note", "reply"]
    assert all(r.chatwoot_message_id is not None for r in w.store.replies)
    assert (await states.state(KEY, w.clock.now())).mode == "handed_off"
    assert w.chatwoot.typing == [(KEY, True), (KEY, False)]


async def test_low_confidence_is_recorded_as_a_hand_off_with_the_burst() -> None:
    w, states = world()
    w.model.answers = [answer(confidence=0.3)]
    await w.say("does the warranty cover water?")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    [note] = w.chatwoot.sent
    assert note.private and "The contact wrote: does the warranty cover water?" in note.content
    state = await states.state(KEY, w.clock.now())
    assert state.mode == "handed_off" and "below the threshold" in (state.reason or "")


@dataclass
class ShadowChatwoot(RecordingChatwoot):
    """Answers as shadow mode does: a recorded id from the shadow range, nothing sent."""

    async def send_message(self, *args: Any, **kwargs: Any) -> int:
        await super().send_message(*args, **kwargs)
        return shadow.SHADOW_IDS_FROM + len(self.sent)


async def test_a_hand_off_in_shadow_mode_leaves_the_bot_state_active() -> None:
    # Chatwoot never saw the note nor a status change: nothing would ever hand it back.
    w, states = world(ShadowChatwoot())
    await w.say("humano")
    w.clock.advance(QUIET)
    await w.pipeline.process(await w.claim(), "w1")
    assert len(w.chatwoot.sent) == 1
    assert (await states.state(KEY, w.clock.now())).mode == "active"
