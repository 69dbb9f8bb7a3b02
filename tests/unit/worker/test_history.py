"""The whole conversation in the prompt, on the in-memory store and the fake clock: a human
agent's messages, the history fetched from Chatwoot once, and the rolling summary refreshed only
when enough turns fell out of the window."""

from __future__ import annotations

from datetime import timedelta

from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.history import SUMMARY_SYSTEM
from chatbuffer.domain.model import (
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
)
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError, ModelError
from chatbuffer.flags import CachedControls
from chatbuffer.intake.webhook import IntakeRules, WebhookIntake
from chatbuffer.simulator import payloads
from chatbuffer.testing import MemoryControls, ScriptedSummarizer, StaticHistorySource
from chatbuffer.worker.pipeline import Pipeline, PipelineConfig
from tests.unit.worker.world import KEY, POLICY, QUIET, REPLY, World


def history_section(prompt: Prompt) -> list[str]:
    """The lines inside <conversation_history>, as the model read them."""
    if "<conversation_history>\n" not in prompt.user:
        return []
    inside = prompt.user.split("<conversation_history>\n", 1)[1]
    return inside.split("\n</conversation_history>", 1)[0].splitlines()


class HistoryWorld(World):
    """``World`` with the conversation's memory, a summarizer and a Chatwoot history source."""

    def __init__(self, *, history_limit: int = 10, summary_every: int = 10) -> None:
        super().__init__()
        self.summarizer = ScriptedSummarizer()
        self.earlier = StaticHistorySource()
        self.next_id = 1000
        self.pipeline = Pipeline(
            history=self.store,
            ledger=self.store,
            flags=CachedControls(MemoryControls(), self.clock),
            chatwoot=self.chatwoot,
            model=self.model,
            clock=self.clock,
            observer=self.observer,
            memory=self.store,
            earlier=self.earlier,
            summarizer=self.summarizer,
            config=PipelineConfig(
                quality_threshold=0.7,
                typing_enabled=False,
                history_limit=history_limit,
                retry=RetryPolicy(max_attempts=3, base_delay=timedelta(seconds=2)),
                policy=POLICY,
                summary_every=summary_every,
            ),
        )
        self.intake = WebhookIntake(
            store=self.store,
            sends=self.store,
            clock=self.clock,
            observer=self.observer,
            rules=IntakeRules(active_statuses=frozenset({"pending"})),
            policy=self._policy,
            human_pause=timedelta(hours=1),
        )

    async def _policy(self, _message: InboundMessage) -> BufferPolicy:
        return POLICY

    async def burst(self, text: str) -> Prompt:
        """The contact writes ``text``, falls quiet, and the burst is answered."""
        self.next_id += 1
        await self.store.record_incoming(
            InboundMessage(
                key=KEY,
                chatwoot_message_id=self.next_id,
                content=text,
                kind="text",
                content_type="text",
                received_at=self.clock.now(),
            ),
            POLICY,
            self.clock.now(),
        )
        self.clock.advance(QUIET)
        before = len(self.model.prompts)
        await self.pipeline.process(await self.claim(), "w1")
        self.clock.advance(60)
        [prompt] = self.model.prompts[before:]
        return prompt


async def test_a_human_agent_s_answer_is_in_the_next_prompt_under_their_name() -> None:
    w = HistoryWorld()
    await w.burst("my jacket arrived torn")
    w.next_id += 1
    answered = await w.intake.handle(
        payloads.agent_reply(
            account_id=KEY.account_id,
            conversation_id=KEY.conversation_id,
            message_id=w.next_id,
            content="So sorry! I refunded order 4411 today.",
            created_at=w.clock.now(),
            agent_name="Bruno",
        )
    )
    assert answered["status"] == "cancelled"
    w.clock.advance(60)
    # A note for colleagues is not the conversation.
    await w.intake.handle(
        payloads.private_note(
            account_id=KEY.account_id,
            conversation_id=KEY.conversation_id,
            message_id=w.next_id + 1,
            content="refund approved by finance",
            created_at=w.clock.now(),
        )
    )
    # The agent hands the conversation back to the bot.
    await w.store.resume_bot(KEY, w.clock.now())
    w.clock.advance(60)
    prompt = await w.burst("thanks! when will I see the money?")
    assert history_section(prompt) == [
        "Customer: my jacket arrived torn",
        f"You: {REPLY}",
        "Human agent Bruno: So sorry! I refunded order 4411 today.",
    ]
    assert "keep to what they said and promised" in prompt.user
    assert "finance" not in prompt.user


async def test_the_summary_is_refreshed_each_time_enough_turns_fell_out() -> None:
    # Two turns a burst (the contact's message, the bot's reply); two shown; refresh at three.
    w = HistoryWorld(history_limit=2, summary_every=3)
    refreshed_after = []
    prompts = []
    for n in range(1, 8):
        prompts.append(await w.burst(f"message {n}"))
        refreshed_after.append(len(w.summarizer.prompts))
    # Before burst 4: six turns, two shown, four fell out. Before burst 6: four more fell out
    # since the summary (burst 5 saw only two).
    assert refreshed_after == [0, 0, 0, 1, 1, 2, 2]
    assert all(p.system == SUMMARY_SYSTEM for p in w.summarizer.prompts)
    summary = w.store.memory[KEY].summary
    assert summary is not None
    assert summary.turns == 8
    assert summary.text == (
        f"Customer: message 3 / You: {REPLY} / Customer: message 4 / You: {REPLY}"
    ).replace("You:", "Assistant:")
    # Burst 7 reads the newest summary, then the two newest turns.
    assert history_section(prompts[6]) == [
        f"Summary of the 8 turns before these: {summary.text}",
        "Customer: message 6",
        f"You: {REPLY}",
    ]
    assert history_section(prompts[4])[0].startswith("Summary of the 4 turns before these:")


async def test_a_failed_summary_costs_only_its_freshness() -> None:
    w = HistoryWorld(history_limit=2, summary_every=2)
    w.summarizer.script = lambda _prompt: ModelError("the model did not answer in time")
    for n in range(1, 4):
        await w.burst(f"message {n}")
    assert len(w.summarizer.prompts) == 1
    assert len(w.chatwoot.sent) == 3
    assert w.statuses() == ["completed"] * 3
    assert w.store.memory[KEY].summary is None
    w.summarizer.script = None
    await w.burst("message 4")
    memory = w.store.memory[KEY]
    assert memory.summary is not None and memory.summary.turns == 4


async def test_history_from_before_chatbuffer_is_fetched_once_and_kept() -> None:
    w = HistoryWorld()
    start = w.clock.now() - timedelta(days=2)
    w.earlier.messages[KEY] = [
        HistoryEntry("contact", "do you ship to Porto?", start, chatwoot_message_id=10),
        HistoryEntry(
            "agent",
            "Yes, in 3 days.",
            start + timedelta(minutes=5),
            author="Carla",
            chatwoot_message_id=12,
        ),
    ]
    w.earlier.fail_with = [ChatwootError("Chatwoot answered 503", retryable=True, status=503)]
    first = await w.burst("ok, ordering now")
    # Chatwoot failed: answered with what is stored, and tried again next time.
    assert history_section(first) == []
    second = await w.burst("order 4411 is placed")
    assert history_section(second) == [
        "Customer: do you ship to Porto?",
        "Human agent Carla: Yes, in 3 days.",
        "Customer: ok, ordering now",
        f"You: {REPLY}",
    ]
    third = await w.burst("when does it leave?")
    assert history_section(third)[:2] == history_section(second)[:2]
    # Fetched before the oldest message chatbuffer stored, at most the window and the margin.
    assert w.earlier.fetches == [(KEY, 1001, 30), (KEY, 1001, 30)]
    assert sorted(r.entry.chatwoot_message_id or 0 for r in w.store.history_rows) == [10, 12]
    assert {r.source for r in w.store.history_rows} == {"chatwoot"}
    assert w.observer.names().count("history_fetched") == 1


async def test_a_summary_older_than_the_stored_one_is_not_stored() -> None:
    w = HistoryWorld()
    now = w.clock.now()
    newer = ConversationSummary("up to now", now, 10)
    assert await w.store.save_summary(KEY, newer, now)
    assert not await w.store.save_summary(
        KEY, ConversationSummary("older", now - timedelta(1), 4), now
    )
    assert w.store.memory[KEY].summary == newer
