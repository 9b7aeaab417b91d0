"""The reorder window: calls in flight stay <= concurrency, but a slow call at the head no
longer stops new calls; up to `reorder_window` batches wait for their turn, every record
is still scored in order, and the window bounds what is held. Hedged calls replace a
straggler when enabled. Real broker, in-process detector, a scripted embedder."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from detector.embedders.base import Matrix
from detector.stream.hedge import MIN_SAMPLES
from devtools.fakeapi import fake_embedding
from devtools.sample_data import stream
from tests.helpers import (
    NewTopic,
    detector_settings,
    metric,
    produce,
    read_topic,
    running_detector,
    values,
    wait_for,
)

pytestmark = pytest.mark.kafka
SLOW = "SLOW marker comment"


class Scripted:
    """Fake-API vectors at once, except: a batch holding `SLOW` waits for `release`, and
    the call numbered `hang_call` (counting from 0) hangs until cancelled."""

    def __init__(self, hang_call: int | None = None) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.running = 0
        self.peak_running = 0
        self.hang_call = hang_call
        self.cancelled = 0
        self.texts = 0

    def reset(self) -> None:
        """Forget the seed file's calls: count the stream's only."""
        self.started = self.peak_running = self.texts = 0

    @property
    def name(self) -> str:
        return "scripted"

    @property
    def dimension(self) -> int:
        return 64

    async def embed(self, texts: Sequence[str]) -> Matrix:
        number = self.started
        self.started += 1
        self.texts += len(texts)
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            if SLOW in texts:
                await self.release.wait()
            if number == self.hang_call:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return np.stack([fake_embedding(t, 64) for t in texts])
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        return None


def comments(n: int, slow_at: int | None = None) -> list[tuple[bytes | None, bytes | None]]:
    texts = [c.text for c in stream(n, anomaly_rate=0.05, seed=41)]
    if slow_at is not None:
        texts[slow_at] = SLOW
    return [(None, orjson.dumps({"text": t})) for t in texts]


class TestReorderWindow:
    async def test_a_slow_head_does_not_stop_new_calls_and_order_is_kept(
        self, kafka_bootstrap: str, new_topic: NewTopic
    ) -> None:
        """concurrency 2, window 6: while the first batch's call is stuck, the other slot
        embeds the next 5 batches; then input pauses (6 batches held, none scored). Once
        released, all 300 are scored, in offset order (the centroid version a score carries
never goes down along the offsets)."""
        topic = await new_topic()
        settings = detector_settings(kafka_bootstrap, topic, embedding={
            "concurrency": 2, "reorder_window": 6, "linger_ms": 20, "cache_entries": 0},
            kafka={"max_poll_records": 50})
        embedder = Scripted()
        async with running_detector(settings, embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="ready")
            embedder.reset()
            await produce(kafka_bootstrap, topic, comments(300, slow_at=3))
            await wait_for(lambda: metric(det.metrics, "detector_paused_partitions") > 0,
                           what="the window to fill and the input to pause")
            assert embedder.started == 6, "the window, not concurrency, bounds queued batches"
            assert metric(det.metrics, "detector_queued_batches") == 6
            assert metric(det.metrics, "detector_records_scored_total") == 0
            assert embedder.peak_running <= 2
            embedder.release.set()
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 300,
                           what="everything scored")
        assert embedder.peak_running <= 2
        assert settings.alerts.scores_topic is not None
        scores = values(await read_topic(kafka_bootstrap, settings.alerts.scores_topic,
                                         at_least=300))
        by_offset = sorted(scores, key=lambda s: s["source"]["offset"])
        assert [s["source"]["offset"] for s in by_offset] == list(range(300))
        versions = [s["centroid_version"] for s in by_offset]
        assert versions == sorted(versions), "scored in offset order"
        assert versions[-1] > versions[0] + 100, "the centroid moved along the way"


class TestHedging:
    async def test_a_hung_call_is_hedged_and_the_hedge_answer_used(
        self, kafka_bootstrap: str, new_topic: NewTopic
    ) -> None:
        """after enough calls for a p99, the call that hangs is sent again; the second
        answer is used, the hung one cancelled, and every comment is scored."""
        topic = await new_topic()
        n = 10 * (MIN_SAMPLES + 20)
        settings = detector_settings(kafka_bootstrap, topic, embedding={
            "concurrency": 2, "hedge_after_p99": 3.0, "linger_ms": 20, "cache_entries": 0,
            "timeout_s": 120.0})
        embedder = Scripted(hang_call=MIN_SAMPLES + 5)
        async with running_detector(settings, embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="ready")
            embedder.reset()
            await produce(kafka_bootstrap, topic, comments(n))
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == n,
                           deadline_s=60, what="everything scored despite the hung call")
            assert metric(det.metrics, "detector_embedding_hedges_total",
                          {"used": "hedge"}) == 1
        assert embedder.cancelled == 1

    async def test_no_hedge_by_default(self, kafka_bootstrap: str, new_topic: NewTopic
                                       ) -> None:
        """hedging is off by default: a call slower than every other is waited for."""
        topic = await new_topic()
        n = 10 * (MIN_SAMPLES + 10)
        settings = detector_settings(kafka_bootstrap, topic, embedding={
            "concurrency": 2, "linger_ms": 20, "cache_entries": 0})
        texts = comments(n, slow_at=10 * (MIN_SAMPLES + 5))
        embedder = Scripted()
        async with running_detector(settings, embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="ready")
            embedder.reset()
            await produce(kafka_bootstrap, topic, texts)
            await wait_for(lambda: embedder.started > MIN_SAMPLES + 6, what="the slow call")
            calls = embedder.started
            embedder.release.set()
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == n,
                           what="everything scored")
            assert metric(det.metrics, "detector_embedding_hedges_total",
                          {"used": "hedge"}) == 0
        assert embedder.started >= calls
        assert embedder.texts == n, "no text was sent twice"
