"""Embedding a batch of comments without losing any: the pipeline's embedding stage.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from detector.config import EmbeddingSettings
from detector.embedders.base import Embedder, Matrix
from detector.embedders.retry import RetryPolicy
from detector.errors import BatchRejectedError, EmbeddingError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.scorer import Vector
from detector.stream.hedge import MIN_HEDGE_S, LatencyTracker, hedged

log = structlog.get_logger("detector.stream.pipeline")

VectorOrRefusal = Vector | rec.DeadLetter  # a unit vector, or why the API refused the text


class BatchEmbedder:
    """Vectors for batches of comments, in order, through one `Embedder`."""

    def __init__(self, embedder: Embedder, retry: RetryPolicy, metrics: Metrics, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 concurrency: int = 1, hedge_after_p99: float = 0.0) -> None:
        """`concurrency` bounds the calls in flight; `hedge_after_p99` (0: off) hedges."""
        self.embedder = embedder
        self.retry = retry
        self.metrics = metrics
        self.sleep = sleep
        self.hedge_after_p99 = hedge_after_p99
        self.latency = LatencyTracker()
        self._calls = asyncio.Semaphore(concurrency)
        self._stopping = False

    @classmethod
    def from_settings(cls, embedder: Embedder, settings: EmbeddingSettings,
                      metrics: Metrics) -> BatchEmbedder:
        """The embedding stage `settings` describe: retry policy, concurrency, hedging."""
        return cls(embedder, RetryPolicy.from_settings(settings), metrics,
                   concurrency=settings.concurrency, hedge_after_p99=settings.hedge_after_p99)

    def stop_retrying(self) -> None:
        """Shutdown began: from now on a retriable failure is raised, not retried."""
        self._stopping = True

    async def embed(self, comments: Sequence[rec.Comment]) -> list[VectorOrRefusal]:
        """Vectors for the comments, in order; a text the API refuses becomes a dead letter."""
        try:
            return list(await self._until_done([c.text for c in comments]))
        except BatchRejectedError as exc:
            if len(comments) == 1:
                reason = f"rejected:{exc.code}" if exc.code else "rejected"
                return [rec.DeadLetter(comments[0].source, reason, str(exc), None)]
            half = len(comments) // 2
            return [*await self.embed(comments[:half]), *await self.embed(comments[half:])]

    async def _until_done(self, texts: list[str]) -> Matrix:
        """Keep the batch through retriable failures until they succeed (no deadline at
        this level: nothing is dropped; the input stays paused behind us)."""
        attempt = 0
        while True:
            try:
                matrix = await self._call(texts)
            except EmbeddingError as exc:
                if not exc.retriable or self._stopping:
                    raise
                attempt += 1
                delay = self.retry.delay(attempt, getattr(exc, "retry_after", None))
                log.warning("embedding failed, retrying", error=str(exc), code=exc.code,
                            attempt=attempt, retry_in_s=round(delay, 2))
                await self.sleep(delay)
                continue
            return matrix

    async def _call(self, texts: list[str]) -> Matrix:
        """One call within the concurrency limit, hedged when configured: the hedge's
        clock starts once the call holds a slot, and the hedge takes a free slot."""
        async with self._calls:
            p99 = self.latency.p99
            after = (max(self.hedge_after_p99 * p99, MIN_HEDGE_S)
                     if self.hedge_after_p99 and p99 is not None else None)
            return await hedged(lambda: self._timed(texts), after,
                                lambda: not self._calls.locked(), self._hedge_used,
                                again=lambda: self._extra(texts))

    async def _extra(self, texts: list[str]) -> Matrix:
        async with self._calls:
            return await self._timed(texts)

    async def _timed(self, texts: list[str]) -> Matrix:
        """The call itself, timed from when it holds a slot (waiting for one is not
        latency of the API)."""
        self.metrics.inflight.inc()
        started = time.monotonic()
        try:
            matrix = await self.embedder.embed(texts)
        finally:
            self.metrics.inflight.dec()
        seconds = time.monotonic() - started
        self.latency.observe(seconds)
        self.metrics.embed_seconds.observe(seconds)
        return matrix

    def _hedge_used(self, hedge: bool) -> None:
        self.metrics.hedges.labels(used="hedge" if hedge else "original").inc()
