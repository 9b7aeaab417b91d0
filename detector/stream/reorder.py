"""The reorder window: batches being embedded or waiting to be scored, in submission order.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from detector.io import records as rec
from detector.metrics import Metrics
from detector.stream.embedding import VectorOrRefusal

Item = tuple[rec.Comment, int]  # a comment and its offset-ledger generation


@dataclass(slots=True)
class Batch:
    """Comments submitted together, and the task embedding them."""

    seq: int
    items: list[Item]
    task: asyncio.Task[list[VectorOrRefusal]]


class ReorderWindow:
    """A FIFO of at most `capacity` batches, each embedding from the moment it enters."""

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.metrics = metrics
        self._batches: deque[Batch] = deque()
        self._left = asyncio.Event()  # a batch left the window
        self._entered = asyncio.Event()  # a batch entered the window
        self._seq = 0

    def __len__(self) -> int:
        return len(self._batches)

    def full(self) -> bool:
        return len(self._batches) >= self.capacity

    def tasks(self) -> list[asyncio.Task[list[VectorOrRefusal]]]:
        """The embedding tasks of the batches held (to cancel at shutdown)."""
        return [batch.task for batch in self._batches]

    def submit(self, items: list[Item],
               embedding: Coroutine[Any, Any, list[VectorOrRefusal]]) -> None:
        """Start embedding `items` and queue them behind the batches already held."""
        self._seq += 1
        self._batches.append(Batch(self._seq, items, asyncio.create_task(embedding)))
        self.metrics.queued.inc()
        self.metrics.batch_size.observe(len(items))
        self._entered.set()

    async def head(self) -> Batch:
        """The oldest batch, once there is one (it stays in the window until `pop`)."""
        while not self._batches:
            self._entered.clear()
            await self._entered.wait()
        return self._batches[0]

    def pop(self) -> None:
        """The head batch was scored: make room."""
        self._batches.popleft()
        self.metrics.queued.dec()
        self._left.set()

    def clear(self) -> None:
        """Drop every batch held, cancelling its embedding (none of them will be scored)."""
        for batch in self._batches:
            batch.task.cancel()
        self.metrics.queued.dec(len(self._batches))
        self._batches.clear()
        self._left.set()

    def departure(self) -> Coroutine[Any, Any, bool]:
        """Awaitable: done once a batch leaves the window after this call (the call itself,
        not the first await, is the starting point)."""
        self._left.clear()
        return self._left.wait()

    async def room(self) -> None:
        """Return once the window is not full."""
        while self.full():
            await self.departure()

    async def empty(self) -> None:
        """Return once every batch held has left the window."""
        while self._batches:
            await self.departure()
