"""Hedged calls: a second call only past the threshold, the first answer wins, the loser
is cancelled, a failure falls back to the other call, and the p99 needs enough samples."""

from __future__ import annotations

import asyncio

import pytest

from detector.stream.hedge import MIN_SAMPLES, LatencyTracker, hedged


class Calls:
    """Each call sleeps for the next duration in `durations` and returns its number; a
    negative duration raises after its absolute value."""

    def __init__(self, *durations: float) -> None:
        self.durations = list(durations)
        self.started = 0
        self.cancelled = 0

    async def __call__(self) -> int:
        number = self.started
        self.started += 1
        duration = self.durations[number]
        try:
            await asyncio.sleep(abs(duration))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if duration < 0:
            msg = f"call {number} failed"
            raise RuntimeError(msg)
        return number


async def test_a_fast_call_is_not_hedged() -> None:
    calls = Calls(0.01, 0.01)
    assert await hedged(calls, 0.5, lambda: True) == 0
    assert calls.started == 1


async def test_a_slow_call_is_hedged_and_the_hedge_wins() -> None:
    calls, won = Calls(5.0, 0.01), list[bool]()
    assert await hedged(calls, 0.05, lambda: True, won.append) == 1
    assert calls.started == 2
    assert calls.cancelled == 1
    assert won == [True]


async def test_the_original_can_still_win() -> None:
    calls, won = Calls(0.1, 5.0), list[bool]()
    assert await hedged(calls, 0.05, lambda: True, won.append) == 0
    assert calls.cancelled == 1
    assert won == [False]


async def test_no_hedge_when_not_allowed_or_no_threshold() -> None:
    calls = Calls(0.1, 0.01)
    assert await hedged(calls, 0.01, lambda: False) == 0
    assert await hedged(Calls(0.05), None, lambda: True) == 0
    assert calls.started == 1


async def test_a_due_hedge_waits_until_allowed() -> None:
    """past the threshold with no free slot, the hedge goes once one frees up."""
    calls, allowed = Calls(5.0, 0.01), asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, allowed.set)
    assert await hedged(calls, 0.05, allowed.is_set) == 1
    assert calls.started == 2


async def test_a_failed_first_finisher_falls_back_to_the_other() -> None:
    calls = Calls(0.2, -0.01)
    assert await hedged(calls, 0.05, lambda: True) == 0
    both = Calls(-0.1, -0.01)
    with pytest.raises(RuntimeError, match="call 1 failed"):
        await hedged(both, 0.05, lambda: True)


def test_p99_needs_enough_samples() -> None:
    tracker = LatencyTracker()
    for _ in range(MIN_SAMPLES - 1):
        tracker.observe(0.1)
    assert tracker.p99 is None
    tracker.observe(0.1)
    assert tracker.p99 == pytest.approx(0.1)
    for i in range(200):
        tracker.observe(1.0 if i % 10 == 0 else 0.1)
    assert tracker.p99 == pytest.approx(1.0)
