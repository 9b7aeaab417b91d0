"""The pipeline's embedding stage without a broker: refusals split, retries keep the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from detector.embedders.base import Matrix
from detector.embedders.retry import RetryPolicy
from detector.errors import (
    BatchRejectedError,
    EmbeddingError,
    FatalEmbeddingError,
    RetriableEmbeddingError,
)
from detector.io import records as rec
from detector.metrics import Metrics
from detector.stream.embedding import BatchEmbedder


class ScriptedEmbedder:
    """Raises the scripted errors first, refuses texts containing "bad", else embeds."""

    name = "scripted"
    dimension = 2

    def __init__(self, *errors: EmbeddingError) -> None:
        self.errors = list(errors)
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls.append(list(texts))
        if self.errors:
            raise self.errors.pop(0)
        if any("bad" in t for t in texts):
            raise BatchRejectedError("refused", code="DataInspectionFailed")
        return np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(texts), 1))

    async def aclose(self) -> None:
        return None


def comments(*texts: str) -> list[rec.Comment]:
    return [rec.Comment(rec.Source("c", 0, i, 0, None), t, None) for i, t in enumerate(texts)]


def stage(embedder: ScriptedEmbedder, sleeps: list[float], *, stopping: bool = False
          ) -> BatchEmbedder:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    policy = RetryPolicy(base_s=0.5, max_s=2.0, deadline_s=1.0, jitter=lambda _, high: high)
    batches = BatchEmbedder(embedder, policy, Metrics(), sleep=sleep)
    if stopping:
        batches.stop_retrying()
    return batches


class TestBatchEmbedder:
    async def test_a_refused_text_alone_becomes_a_dead_letter_in_its_place(self) -> None:
        """A refused batch is split until the offending text is alone; the rest embed."""
        sleeps: list[float] = []
        out = await stage(ScriptedEmbedder(), sleeps).embed(comments("a", "b", "bad", "d"))
        assert [isinstance(o, rec.DeadLetter) for o in out] == [False, False, True, False]
        letter = out[2]
        assert isinstance(letter, rec.DeadLetter)
        assert letter.reason == "rejected:DataInspectionFailed"
        assert letter.source.offset == 2

    async def test_retriable_failures_keep_the_batch_past_the_deadline(self) -> None:
        """Retriable errors are retried with the policy's backoff, with no deadline at
        this level, until the batch embeds."""
        sleeps: list[float] = []
        embedder = ScriptedEmbedder(*[RetriableEmbeddingError("503") for _ in range(4)])
        out = await stage(embedder, sleeps).embed(comments("a", "b"))
        assert len(out) == 2
        assert sleeps == [1.0, 2.0, 2.0, 2.0]
        assert embedder.calls == [["a", "b"]] * 5

    async def test_retry_after_from_the_server_is_honoured(self) -> None:
        """A throttled error's Retry-After is the wait before the next call."""
        sleeps: list[float] = []
        embedder = ScriptedEmbedder(RetriableEmbeddingError("429", retry_after=7.0))
        await stage(embedder, sleeps).embed(comments("a"))
        assert sleeps == [7.0]

    async def test_a_fatal_error_is_raised_at_once(self) -> None:
        """A non-retriable error is not retried."""
        sleeps: list[float] = []
        with pytest.raises(FatalEmbeddingError):
            await stage(ScriptedEmbedder(FatalEmbeddingError("bad key")), sleeps).embed(
                comments("a"))
        assert sleeps == []

    async def test_a_retriable_error_is_raised_once_shutdown_began(self) -> None:
        """While stopping, a retriable error is raised instead of retried."""
        sleeps: list[float] = []
        with pytest.raises(RetriableEmbeddingError):
            await stage(ScriptedEmbedder(RetriableEmbeddingError("503")), sleeps,
                        stopping=True).embed(comments("a"))
        assert sleeps == []


class Gated:
    """Every call waits for `open`, set once the second call has started and every call
    already scheduled has had its turn: without a bound all six are running by then;
    with concurrency 2 the other four wait for a slot."""

    name = "gated"
    dimension = 2

    def __init__(self, metrics: Metrics) -> None:
        self.open = asyncio.Event()
        self.metrics = metrics
        self.running = self.peak = self.started = 0
        self.gauge_peak = 0.0

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.started += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        gauge = self.metrics.registry.get_sample_value("detector_inflight_batches") or 0.0
        self.gauge_peak = max(self.gauge_peak, gauge)
        if self.started == 2:  # after the calls already scheduled have started
            asyncio.get_running_loop().call_soon(self.open.set)
        try:
            await self.open.wait()
        finally:
            self.running -= 1
        return np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(texts), 1))

    async def aclose(self) -> None:
        return None


class TestConcurrency:
    async def test_at_most_concurrency_calls_run_however_many_batches_wait(self) -> None:
        """6 batches submitted at once, concurrency 2: never more than two calls run (and
        the in-flight gauge says so); all six finish."""
        metrics = Metrics()
        embedder = Gated(metrics)
        stage = BatchEmbedder(embedder, RetryPolicy(), metrics, concurrency=2)
        outs = await asyncio.gather(*(stage.embed(comments(f"t{i}")) for i in range(6)))
        assert [len(o) for o in outs] == [1] * 6
        assert embedder.started == 6
        assert embedder.peak == 2
        assert embedder.gauge_peak == 2
        assert metrics.registry.get_sample_value("detector_inflight_batches") == 0
