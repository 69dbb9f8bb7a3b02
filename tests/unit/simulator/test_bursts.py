"""The burst generator and the replay behind docs/smart-windows.md."""

from __future__ import annotations

from dataclasses import replace

from chatbuffer.domain.smart_window import MessageShape, WindowPolicy
from chatbuffer.simulator.bursts import (
    Burst,
    Contact,
    Message,
    Population,
    generate,
    replay,
)

FIXED = WindowPolicy(base_ms=30_000, min_ms=5_000)


def burst(*at_s: float, question_last: bool = False, urgency: int = 3) -> Burst:
    shapes = [MessageShape(10) for _ in at_s]
    if question_last:
        shapes[-1] = MessageShape(10, question=True)
    return Burst(
        tuple(Message(s * 1000, shape) for s, shape in zip(at_s, shapes, strict=True)), urgency
    )


def test_the_same_seed_generates_the_same_population() -> None:
    small = Population(contacts=50)
    assert generate(small, 7) == generate(small, 7)
    assert generate(small, 7) != generate(small, 8)
    bursts = [b for c in generate(small, 7) for b in c.bursts]
    assert all(b.messages[0].at_ms == 0 for b in bursts)
    assert all(
        later.at_ms > earlier.at_ms
        for b in bursts
        for earlier, later in zip(b.messages, b.messages[1:], strict=False)
    )


def test_the_fixed_window_waits_the_window_after_the_last_message() -> None:
    outcome = replay([Contact((burst(0, 5, 9),))], FIXED)
    assert (outcome.bursts, outcome.buffers, outcome.cut) == (1, 1, 0)
    assert outcome.waits_ms == [30_000]


def test_a_gap_longer_than_the_window_cuts_the_burst_in_two() -> None:
    outcome = replay([Contact((burst(0, 45),))], FIXED)
    assert (outcome.buffers, outcome.cut) == (2, 1)
    assert outcome.cut_bursts == {1}


def test_the_age_cap_closes_a_burst_that_never_pauses() -> None:
    endless = burst(*range(0, 400, 20))
    outcome = replay([Contact((endless,))], FIXED)
    assert outcome.cut == 1
    # The first buffer closed at the cap, 300 s after its first message.
    assert outcome.waits_ms[0] == 300_000 - 280_000


def test_a_learned_rhythm_shortens_the_wait_for_a_quick_typist_after_a_few_gaps() -> None:
    quick = Contact(tuple(burst(0, 2, 4) for _ in range(5)))
    fixed = replay([quick], FIXED)
    learned = replay([quick], replace(FIXED, learn=True))
    assert learned.cut == 0
    assert learned.mean_wait_ms < fixed.mean_wait_ms
    # The first burst still waits the whole window: two gaps are not enough to go by.
    assert learned.waits_ms[0] == 30_000
    assert learned.waits_ms[-1] < 10_000


def test_cuts_are_counted_against_the_fixed_window() -> None:
    # A question that is not the last message: the fast track closes too early once.
    tricky = Burst(
        (
            Message(0, MessageShape(120)),
            Message(3_000, MessageShape(20, question=True)),
            Message(12_000, MessageShape(5)),
        ),
        urgency=3,
    )
    contacts = [Contact((tricky,))]
    fixed = replay(contacts, FIXED)
    fast = replay(contacts, replace(FIXED, fast_track=True, fast_track_ms=6_000))
    assert fixed.cut == 0
    assert fast.cut_early_against(fixed) == 1
