"""Each conversation's bot state and the control word's intake steps, on ``MemoryBotStates`` and
``SqlBotStates`` over SQLite and PostgreSQL: the same contract, so the fake cannot drift."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from chatbuffer.domain.model import HistoryEntry
from chatbuffer.domain.ports import BotStates
from chatbuffer.storage import database
from chatbuffer.storage.bot_states import SqlBotStates
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.tables import conversation_bot_state
from chatbuffer.testing import FakeClock, MemoryBotStates, MemoryStore
from tests.integration.test_store import KEY, LEASE, OTHER, POLICY, message

Store = MemoryStore | SqlBufferStore


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


@pytest.fixture
def pair(any_store: Store) -> tuple[Store, BotStates]:
    if isinstance(any_store, MemoryStore):
        return any_store, MemoryBotStates(any_store)
    return any_store, SqlBotStates(any_store.engine)


async def test_a_conversation_nobody_touched_is_active(pair) -> None:
    _, states = pair
    state = await states.state(KEY, FakeClock().now())
    assert state.mode == "active" and state.since is None and state.reason is None


async def test_a_hand_off_holds_until_the_conversation_is_handed_back(pair) -> None:
    _, states = pair
    clock = FakeClock()
    handed = clock.now()
    await states.hand_off(KEY, "handed off: control_word", handed)
    clock.advance(60)

    state = await states.state(KEY, clock.now())
    assert (state.mode, state.since, state.reason) == (
        "handed_off",
        handed,
        "handed off: control_word",
    )
    assert (await states.state(OTHER, clock.now())).mode == "active"

    assert await states.resume(KEY, clock.now(), by_operator=False)
    back = await states.state(KEY, clock.now())
    assert (back.mode, back.since, back.reason) == (
        "active",
        clock.now(),
        "handed back to the bot",
    )
    assert not await states.resume(KEY, clock.now(), by_operator=False)


async def test_a_second_hand_off_records_the_newer_reason(pair) -> None:
    _, states = pair
    clock = FakeClock()
    await states.hand_off(KEY, "first", clock.now())
    clock.advance(5)
    await states.hand_off(KEY, "second", clock.now())
    state = await states.state(KEY, clock.now())
    assert (state.reason, state.since) == ("second", clock.now())


async def test_off_is_ended_only_by_an_operator(pair) -> None:
    _, states = pair
    clock = FakeClock()
    await states.turn_off(KEY, "vip: the owner answers", clock.now())
    # Neither a hand-off nor a status change undoes an operator's off.
    await states.hand_off(KEY, "handed off: low confidence", clock.now())
    assert not await states.resume(KEY, clock.now(), by_operator=False)
    state = await states.state(KEY, clock.now())
    assert (state.mode, state.reason) == ("off", "vip: the owner answers")

    assert await states.resume(KEY, clock.now(), by_operator=True)
    assert (await states.state(KEY, clock.now())).mode == "active"


async def test_a_humans_pause_is_shown_and_an_operator_can_end_it(pair) -> None:
    store, states = pair
    clock = FakeClock()
    until = clock.now() + timedelta(hours=1)
    await store.cancel_open(KEY, clock.now(), "a human agent answered", pause_until=until)

    paused = await states.state(KEY, clock.now())
    assert (paused.mode, paused.until) == ("paused", until)
    assert (await store.record_incoming(message(1), POLICY, clock.now())).human_active_until

    clock.advance(1)
    assert await states.resume(KEY, clock.now(), by_operator=True)
    back = await states.state(KEY, clock.now())
    assert (back.mode, back.since, back.reason) == (
        "active",
        clock.now(),
        "resumed by an operator",
    )
    assert (await store.record_incoming(message(2), POLICY, clock.now())).stored


async def test_the_state_is_one_row_keyed_by_the_conversation(db_url: str) -> None:
    engine = database.create_engine(db_url, pool_size=2)
    try:
        states = SqlBotStates(engine)
        now = FakeClock().now()
        await states.hand_off(KEY, "a", now)
        await states.hand_off(KEY, "b", now)
        await states.turn_off(OTHER, "c", now)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        conversation_bot_state.c.account_id,
                        conversation_bot_state.c.conversation_id,
                        conversation_bot_state.c.state,
                    ).order_by(conversation_bot_state.c.conversation_id)
                )
            ).all()
    finally:
        await engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 42, "handed_off"), (1, 43, "off")]


# -- the control word's intake steps ------------------------------------------------------------


async def test_closing_a_burst_now_makes_it_due_at_once(store: Store) -> None:
    clock = FakeClock()
    first = await store.record_incoming(message(1), POLICY, clock.now())
    clock.advance(1)
    word = await store.record_incoming(message(2, text="humano"), POLICY, clock.now())
    assert word.buffer_id == first.buffer_id and word.due_at is not None
    assert word.due_at > clock.now()
    assert await store.claim_due(clock.now(), "w1", LEASE, 10) == []

    assert word.buffer_id is not None
    assert await store.close_now(KEY, word.buffer_id, clock.now(), "control_word")
    # Only a collecting buffer can be closed.
    assert not await store.close_now(KEY, word.buffer_id, clock.now(), "control_word")

    claimed = await store.claim_due(clock.now(), "w1", LEASE, 10)
    assert [c.buffer_id for c in claimed] == [word.buffer_id]
    contents = await store.load(claimed[0], "w1", 10)
    assert [m.content for m in contents.messages] == ["hi", "humano"]
    # The next message starts a new burst.
    after = await store.record_incoming(message(3), POLICY, clock.now())
    assert after.opened_buffer


async def test_a_kept_message_is_history_for_the_next_burst(store: Store) -> None:
    clock = FakeClock()
    kept = HistoryEntry(
        role="contact", content="are you there?", at=clock.now(), chatwoot_message_id=7
    )
    await store.keep_contact_message(KEY, kept, clock.now())
    await store.keep_contact_message(KEY, kept, clock.now())
    clock.advance(5)
    await store.record_incoming(message(8, text="hello again"), POLICY, clock.now())
    clock.advance(POLICY.quiet_period)
    [job] = await store.claim_due(clock.now(), "w1", LEASE, 10)
    contents = await store.load(job, "w1", 10)
    assert [(t.role, t.content) for t in contents.history] == [("contact", "are you there?")]
    assert [m.content for m in contents.messages] == ["hello again"]
