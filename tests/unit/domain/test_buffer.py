"""The buffer rules, driven by a fake clock: exact due times, every limit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from chatbuffer.domain import buffer
from chatbuffer.domain.buffer import BufferPolicy, BufferWindow
from chatbuffer.testing import FakeClock

POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)


def feed(clock: FakeClock, gaps: Sequence[float], policy: BufferPolicy = POLICY):
    """Place one message after each gap (seconds); return every placement."""
    placements = []
    window: BufferWindow | None = None
    for gap in gaps:
        clock.advance(gap)
        placement = buffer.place(window, policy, clock.now())
        placements.append(placement)
        window = placement.window
    return placements


def test_first_message_opens_a_buffer_due_one_quiet_period_later() -> None:
    clock = FakeClock()
    start = clock.now()
    [placement] = feed(clock, [0])
    assert placement.opens_new
    assert placement.window.message_count == 1
    assert placement.due == start + timedelta(seconds=30)
    assert not placement.closes_now


def test_each_message_pushes_the_due_time_to_30_s_after_it() -> None:
    clock = FakeClock()
    start = clock.now()
    placements = feed(clock, [0, 5, 12, 29])
    assert [p.opens_new for p in placements] == [True, False, False, False]
    assert [p.window.message_count for p in placements] == [1, 2, 3, 4]
    assert [p.due - start for p in placements] == [
        timedelta(seconds=30),
        timedelta(seconds=35),
        timedelta(seconds=47),
        timedelta(seconds=76),
    ]


def test_a_message_exactly_at_the_due_time_opens_a_new_buffer() -> None:
    clock = FakeClock()
    placements = feed(clock, [0, 30])
    assert placements[1].opens_new
    assert placements[1].window.message_count == 1
    assert placements[1].due == clock.now() + timedelta(seconds=30)


def test_a_message_just_before_the_due_time_still_joins() -> None:
    clock = FakeClock()
    placements = feed(clock, [0, 29.999])
    assert not placements[1].opens_new
    assert placements[1].window.message_count == 2


def test_never_later_than_max_age_after_the_first_message() -> None:
    clock = FakeClock()
    start = clock.now()
    # A message every 20 s would postpone forever without the cap.
    placements = feed(clock, [0] + [20] * 14)
    assert not any(p.opens_new for p in placements[1:])
    assert placements[-1].window.message_count == 15
    # The 15th message came at 280 s: 280 + 30 = 310 > 300, so the cap wins.
    assert placements[-1].due == start + timedelta(seconds=300)
    # At 300 s the buffer is closed, so the next message opens a new one.
    clock.advance(20)
    nxt = buffer.place(placements[-1].window, POLICY, clock.now())
    assert nxt.opens_new


def test_closes_at_once_when_it_reaches_max_size_and_never_holds_more() -> None:
    policy = BufferPolicy(
        quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=3
    )
    clock = FakeClock()
    placements = feed(clock, [0, 1, 1, 1], policy)
    third = placements[2]
    assert third.window.message_count == 3
    assert third.closes_now
    assert third.due == clock.now() - timedelta(seconds=1)  # the instant of the third message
    fourth = placements[3]
    assert fourth.opens_new
    assert fourth.window.message_count == 1


def test_buffering_switched_off_closes_every_message_on_arrival() -> None:
    clock = FakeClock()
    policy = POLICY.without_waiting()
    placements = feed(clock, [0, 0.1], policy)
    assert all(p.opens_new and p.closes_now for p in placements)
    assert placements[1].due == clock.now()


def test_is_open_boundaries() -> None:
    clock = FakeClock()
    window = BufferWindow(started_at=clock.now(), last_message_at=clock.now(), message_count=1)
    assert buffer.is_open(window, POLICY, clock.now() + timedelta(seconds=29))
    assert not buffer.is_open(window, POLICY, clock.now() + timedelta(seconds=30))


def test_policy_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="max_size"):
        BufferPolicy(quiet_period=timedelta(seconds=1), max_age=timedelta(seconds=1), max_size=0)


@pytest.mark.parametrize(
    ("gaps", "policy", "by_quiet"),
    [
        ([0, 10, 10], POLICY, True),  # the contact paused
        ([0, *[20] * 14], POLICY, False),  # the age cap closed it
        ([0, 1, 1], BufferPolicy(timedelta(seconds=30), timedelta(seconds=300), 3), False),
    ],
    ids=["quiet", "age-cap", "size-cap"],
)
def test_why_a_buffer_closed_is_read_from_its_own_times(
    gaps: list[float], policy: BufferPolicy, by_quiet: bool
) -> None:
    last = feed(FakeClock(), gaps, policy)[-1]
    assert buffer.closed_by_quiet(last.window, last.due, policy) is by_quiet


def test_only_a_buffer_closed_by_quiet_and_younger_than_the_cap_may_fold() -> None:
    clock = FakeClock()
    start = clock.now()
    quiet = feed(clock, [0, 10])[-1]
    capped = feed(FakeClock(), [0, *[20] * 14])[-1]
    cap = start + POLICY.max_age
    assert buffer.may_fold(quiet.window, quiet.due, POLICY, cap - timedelta(milliseconds=1))
    assert not buffer.may_fold(quiet.window, quiet.due, POLICY, cap)
    assert not buffer.may_fold(capped.window, capped.due, POLICY, capped.due)


def test_a_fold_keeps_the_oldest_start_so_the_cap_still_counts_from_it() -> None:
    clock = FakeClock()
    start = clock.now()
    older = BufferWindow(start, start + timedelta(seconds=10), 2)
    newer = BufferWindow(start + timedelta(seconds=50), start + timedelta(seconds=290), 9)
    grown = buffer.merged(older, newer)
    assert grown == BufferWindow(start, start + timedelta(seconds=290), 11)
    assert buffer.due_at(grown, POLICY) == start + POLICY.max_age
