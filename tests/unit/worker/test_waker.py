"""The worker's interruptible sleep, on a fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from chatbuffer.testing import FakeClock
from chatbuffer.worker.waker import Waker


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_sleeps_exactly_until_the_target() -> None:
    clock = FakeClock()
    waker = Waker(clock)
    target = clock.now() + timedelta(seconds=7)
    sleeping = asyncio.create_task(waker.sleep_until(target, max_seconds=10))
    await settle()
    clock.advance(6.999)
    await settle()
    assert not sleeping.done()
    clock.advance(0.001)
    await settle()
    assert sleeping.done()


async def test_the_sweep_caps_the_sleep() -> None:
    clock = FakeClock()
    waker = Waker(clock)
    sleeping = asyncio.create_task(waker.sleep_until(None, max_seconds=10))
    await settle()
    clock.advance(10)
    await settle()
    assert sleeping.done()


async def test_an_earlier_due_time_wakes_it_a_later_one_does_not() -> None:
    clock = FakeClock()
    waker = Waker(clock)
    target = clock.now() + timedelta(seconds=30)
    sleeping = asyncio.create_task(waker.sleep_until(target, max_seconds=60))
    await settle()
    waker.poke(clock.now() + timedelta(seconds=45))
    await settle()
    assert not sleeping.done()
    waker.poke(clock.now() + timedelta(seconds=5))
    await settle()
    assert sleeping.done()


async def test_a_poke_while_awake_is_not_lost() -> None:
    clock = FakeClock()
    waker = Waker(clock)
    waker.poke(clock.now() + timedelta(seconds=1))  # arrives while the scheduler is busy
    await asyncio.wait_for(waker.sleep_until(clock.now() + timedelta(hours=1), 60), timeout=1)
