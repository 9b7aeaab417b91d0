"""Hedged embedding calls: a second identical call for one that runs far past the p99.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")
MIN_SAMPLES = 50
MIN_HEDGE_S = 0.05  # never hedge sooner: below this, jitter is not a straggler
RECHECK_S = 0.05  # how often a due hedge asks `may_hedge()` again
WINDOW = 1000  # recent successful call latencies kept for the p99


class LatencyTracker:
    """The p99 of the last `WINDOW` successful call latencies (recomputed every 50)."""

    def __init__(self) -> None:
        self._seconds: deque[float] = deque(maxlen=WINDOW)
        self._p99: float | None = None
        self._since = 0

    def observe(self, seconds: float) -> None:
        self._seconds.append(seconds)
        self._since += 1
        if self._since >= MIN_SAMPLES or self._p99 is None:
            self._since = 0
            self._p99 = (float(np.percentile(np.fromiter(self._seconds, float), 99))
                         if len(self._seconds) >= MIN_SAMPLES else None)

    @property
    def p99(self) -> float | None:
        """None until `MIN_SAMPLES` calls have been seen."""
        return self._p99


async def hedged(call: Callable[[], Awaitable[T]], after_s: float | None,
                 may_hedge: Callable[[], bool],
                 on_hedge: Callable[[bool], None] | None = None,
                 again: Callable[[], Awaitable[T]] | None = None) -> T:
    """`call()`, and once more (`again()`, default `call()`) if the first is still
    running after `after_s` seconds and `may_hedge()` allows it; the first result wins,
    the loser is cancelled. If the first finisher failed, the other one's outcome is
    awaited. `on_hedge(won)` reports whether the hedge's answer was the one used."""
    first = asyncio.ensure_future(call())
    if after_s is None:
        return await first
    while True:  # past the threshold, hedge as soon as `may_hedge()` allows it
        done, _ = await asyncio.wait({first}, timeout=after_s)
        if done:
            return first.result()
        if may_hedge():
            break
        after_s = min(after_s, RECHECK_S)
    second = asyncio.ensure_future((again or call)())
    try:
        done, pending = await asyncio.wait({first, second},
                                           return_when=asyncio.FIRST_COMPLETED)
        winner = first if first in done else second
        if winner.exception() is not None and pending:
            other = pending.pop()
            await asyncio.wait({other})
            if other.exception() is None:
                winner = other
        if on_hedge is not None:
            on_hedge(winner is second)
        return winner.result()  # the first finisher's error when both failed
    finally:
        for task in (first, second):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
