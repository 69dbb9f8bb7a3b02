"""The smart-window rules: learned rhythm, fast track, voice-note wait (each off by default)."""

from __future__ import annotations

import pytest

from chatbuffer.domain.smart_window import (
    MIN_SAMPLES,
    MessageShape,
    Rhythm,
    WindowPolicy,
    WindowState,
    advance,
    looks_finished,
    quiet_ms,
    shape_of,
)

BASE = 30_000


def learned(*gaps: float) -> Rhythm:
    rhythm = Rhythm()
    for gap in gaps:
        rhythm = rhythm.observe(gap, BASE)
    return rhythm


def test_every_rule_is_off_by_default_and_the_window_is_the_fixed_one() -> None:
    policy = WindowPolicy(base_ms=BASE)
    assert not policy.enabled
    burst = [shape_of("x" * 200), shape_of("when do you open?", voice_pending=True)]
    assert quiet_ms(policy, learned(2_000, 2_000, 2_000, 2_000), burst, urgency=10) == BASE


def test_a_quick_typist_waits_less_once_a_few_gaps_are_known() -> None:
    policy = WindowPolicy(base_ms=BASE, min_ms=5_000, learn=True)
    few = learned(*[2_000] * (MIN_SAMPLES - 1))
    assert quiet_ms(policy, few, [shape_of("hi")]) == BASE
    steady = learned(2_000, 2_500, 1_800, 2_200, 2_100)
    wait = quiet_ms(policy, steady, [shape_of("hi")])
    assert 5_000 <= wait < 10_000


def test_the_learned_wait_stays_between_the_minimum_and_the_fixed_window() -> None:
    policy = WindowPolicy(base_ms=BASE, min_ms=8_000, learn=True)
    assert quiet_ms(policy, learned(100, 120, 90, 110), [shape_of("a")]) == 8_000
    assert quiet_ms(policy, learned(25_000, 29_000, 20_000, 28_000), [shape_of("a")]) == BASE


def test_a_gap_of_a_whole_window_is_between_bursts_and_is_not_learned() -> None:
    rhythm = learned(2_000, 2_000, 2_000)
    assert rhythm.observe(BASE, BASE) == rhythm
    assert rhythm.observe(3_600_000, BASE) == rhythm
    assert rhythm.observe(-5, BASE) == rhythm


def test_an_erratic_typist_gets_a_longer_wait_than_a_steady_one_with_the_same_mean() -> None:
    policy = WindowPolicy(base_ms=BASE, min_ms=1_000, learn=True)
    steady = learned(*[4_000] * 12)
    erratic = learned(*[1_000, 7_000] * 6)
    assert quiet_ms(policy, erratic, [shape_of("a")]) > quiet_ms(policy, steady, [shape_of("a")])


def test_a_question_after_a_long_message_is_fast_tracked() -> None:
    policy = WindowPolicy(base_ms=BASE, fast_track=True, fast_track_ms=6_000)
    explained = [shape_of("my order " + "x" * 100), shape_of("can you check it?")]
    assert looks_finished(explained)
    assert quiet_ms(policy, Rhythm(), explained) == 6_000
    # Not finished: no question last, or a short question after short messages.
    assert quiet_ms(policy, Rhythm(), [*explained, shape_of("also")]) == BASE
    assert quiet_ms(policy, Rhythm(), [shape_of("hi"), shape_of("you there?")]) == BASE


def test_an_urgent_question_is_fast_tracked_even_when_short() -> None:
    policy = WindowPolicy(base_ms=BASE, fast_track=True, fast_track_ms=6_000)
    burst = [shape_of("card stolen"), shape_of("block it now?")]
    assert quiet_ms(policy, Rhythm(), burst, urgency=9) == 6_000
    assert quiet_ms(policy, Rhythm(), burst, urgency=3) == BASE


@pytest.mark.parametrize("mark", ["?", "\uff1f", "\u061f"])
def test_questions_are_recognised_in_several_scripts(mark: str) -> None:
    assert shape_of(f"long text{mark}  ").question
    assert not shape_of("¿qué tal").question


def test_a_voice_note_still_to_transcribe_lengthens_the_wait() -> None:
    policy = WindowPolicy(base_ms=BASE, voice_wait=True, voice_extra_ms=15_000)
    assert quiet_ms(policy, Rhythm(), [MessageShape(0, voice_pending=True)]) == BASE + 15_000
    assert quiet_ms(policy, Rhythm(), [MessageShape(0, voice_pending=False)]) == BASE


def test_the_rules_combine_a_learned_wait_and_the_voice_allowance() -> None:
    policy = WindowPolicy(base_ms=BASE, min_ms=5_000, learn=True, voice_wait=True)
    rhythm = learned(2_000, 2_000, 2_000, 2_000)
    assert quiet_ms(policy, rhythm, [MessageShape(0, voice_pending=True)]) == (
        quiet_ms(policy, rhythm, [MessageShape(0)]) + policy.voice_extra_ms
    )


def test_a_policy_with_impossible_bounds_is_refused() -> None:
    with pytest.raises(ValueError, match="min_ms"):
        WindowPolicy(base_ms=BASE, min_ms=BASE + 1)
    with pytest.raises(ValueError, match="negative"):
        WindowPolicy(base_ms=BASE, fast_track_ms=-1)


def test_the_state_learns_from_each_new_message_and_ignores_a_redelivery() -> None:
    policy = WindowPolicy(base_ms=BASE, min_ms=5_000, learn=True)
    state = WindowState()
    for n, at in enumerate([0, 2_000, 4_000, 6_000], start=1):
        state = advance(state, n, at, shape_of("hi"), policy)
    assert state.rhythm.samples == 3
    assert state.burst == tuple(shape_of("hi") for _ in range(4))
    assert state.quiet_ms < BASE
    assert state.closes_at_ms == 6_000 + state.quiet_ms
    assert advance(state, 4, 9_000, shape_of("hi"), policy) == state
    assert advance(state, 2, 9_000, shape_of("hi"), policy) == state


def test_a_message_after_the_burst_closed_starts_a_new_burst() -> None:
    policy = WindowPolicy(base_ms=BASE, fast_track=True, fast_track_ms=6_000)
    state = advance(WindowState(), 1, 0, shape_of("x" * 100), policy)
    state = advance(state, 2, 2_000, shape_of("ok?"), policy)
    assert state.quiet_ms == 6_000
    later = advance(state, 3, 2_000 + 6_000 + 1, shape_of("and?"), policy)
    # A new burst: a short question alone is not fast-tracked.
    assert later.burst == (shape_of("and?"),)
    assert later.quiet_ms == BASE
