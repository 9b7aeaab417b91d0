"""The batcher: decoded comments wait here until they make a batch for the reorder window.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import time

from detector.stream.embedding import BatchEmbedder
from detector.stream.reorder import Item, ReorderWindow


class Batcher:
    """Pending comments, cut into batches that start embedding in the reorder window."""

    def __init__(self, window: ReorderWindow, embedding: BatchEmbedder, *, batch_size: int,
                 linger_s: float) -> None:
        self.window = window
        self.embedding = embedding
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._pending: list[Item] = []
        self._since = 0.0  # when the oldest pending comment arrived (or the last cut)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, item: Item) -> None:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(item)

    def backlogged(self) -> bool:
        """The window is full and a whole batch waits for it: time to pause the input."""
        return self.window.full() and len(self._pending) >= self.batch_size

    def linger_left(self) -> float | None:
        """Seconds until the pending comments may be cut short of a full batch (None: no
        comment is pending)."""
        if not self._pending:
            return None
        return max(0.0, self._since + self.linger_s - time.monotonic())

    async def submit(self, *, force: bool) -> None:
        """Cut full batches (and a lingered or forced partial one) while the window has room."""
        size = self.batch_size
        while self._pending:
            lingered = time.monotonic() - self._since >= self.linger_s
            if not (len(self._pending) >= size or force or lingered):
                return
            if self.window.full():
                if not force:
                    return
                await self.window.room()  # shutdown or revocation: wait, stay bounded
            chunk, self._pending = self._pending[:size], self._pending[size:]
            self._since = time.monotonic()
            self.window.submit(chunk, self.embedding.embed([c for c, _ in chunk]))
