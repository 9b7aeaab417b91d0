"""The embedding cache: repeated texts are embedded once, rows are unchanged, the LRU is
bounded, keys separate every setting that changes a vector, and a detector's scores,
alerts and centroid are identical with and without it (real broker, fake API)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.commands.calibrate import EmbeddingCache
from detector.config import EmbeddingSettings, load_settings
from detector.embedders import build_embedder
from detector.embedders.base import Matrix
from detector.embedders.cache import CachingEmbedder, cache_namespace
from detector.errors import RetriableEmbeddingError
from detector.io.records import estimate_tokens
from detector.metrics import Metrics
from devtools.fakeapi import FakeEmbeddingServer, fake_embedding
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

SETTINGS = EmbeddingSettings(backend="dashscope", model="text-embedding-v4", dimension=64,
                             price_per_million_tokens=2.0)


class Fake:
    """An embedder returning the fake API's rows and recording what it was sent."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    @property
    def name(self) -> str:
        return "fake"

    @property
    def dimension(self) -> int:
        return 64

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls.append(list(texts))
        if self.fail:
            raise RetriableEmbeddingError("down")
        return np.stack([fake_embedding(t, 64) for t in texts])

    async def aclose(self) -> None:
        return None


def rows(texts: list[str]) -> Matrix:
    return np.stack([fake_embedding(t, 64) for t in texts])


class TestCachingEmbedder:
    async def test_repeats_across_and_within_batches_are_sent_once(self) -> None:
        inner, metrics = Fake(), Metrics()
        cache = CachingEmbedder(inner, SETTINGS, 100, metrics)
        first = await cache.embed(["a cat", "a dog", "a cat"])
        second = await cache.embed(["a dog", "a bird", "a dog"])
        assert inner.calls == [["a cat", "a dog"], ["a bird"]]
        np.testing.assert_array_equal(first, rows(["a cat", "a dog", "a cat"]))
        np.testing.assert_array_equal(second, rows(["a dog", "a bird", "a dog"]))
        assert first.dtype == np.float32
        assert (cache.hits, cache.misses) == (3, 3)
        assert metric(metrics, "detector_embedding_cache_hits_total") == 3
        assert metric(metrics, "detector_embedding_cache_misses_total") == 3
        assert metric(metrics, "detector_embedding_cache_entries") == 3

    async def test_tokens_and_money_saved(self) -> None:
        metrics = Metrics()
        cache = CachingEmbedder(Fake(), SETTINGS, 100, metrics)
        text = "the same spam text again and again"
        await cache.embed([text, text, "other"])
        await cache.embed([text])
        saved = 2 * estimate_tokens(text)
        assert cache.tokens_saved == saved
        assert metric(metrics, "detector_embedding_tokens_saved_total") == saved
        assert metric(metrics, "detector_embedding_cost_saved_usd_total") == pytest.approx(
            saved * 2.0 / 1e6)

    async def test_the_lru_evicts_the_least_recently_used(self) -> None:
        inner, metrics = Fake(), Metrics()
        cache = CachingEmbedder(inner, SETTINGS, 2, metrics)
        await cache.embed(["one", "two"])
        await cache.embed(["one"])  # two is now the least recently used
        await cache.embed(["three"])
        await cache.embed(["one", "two"])
        assert inner.calls == [["one", "two"], ["three"], ["two"]]
        assert len(cache.rows) == 2
        assert cache.rows.evictions == 2
        assert metric(metrics, "detector_embedding_cache_evictions_total") == 2

    async def test_a_failure_caches_nothing_and_propagates(self) -> None:
        inner = Fake(fail=True)
        cache = CachingEmbedder(inner, SETTINGS, 10)
        with pytest.raises(RetriableEmbeddingError):
            await cache.embed(["x"])
        inner.fail = False
        await cache.embed(["x"])
        assert len(inner.calls) == 2
        assert cache.hits == 0

    def test_every_setting_that_changes_a_vector_changes_the_key(self) -> None:
        base = EmbeddingSettings(backend="dashscope", model="text-embedding-v4", dimension=256,
                                 text_type="query")
        variants = [base,
                    base.model_copy(update={"backend": "openai"}),
                    base.model_copy(update={"model": "text-embedding-v3"}),
                    base.model_copy(update={"dimension": 512}),
                    base.model_copy(update={"text_type": "document"}),
                    base.model_copy(update={"instruct": "Find spam"})]
        keys = {CachingEmbedder(Fake(), s, 1).key("same text") for s in variants}
        assert len(keys) == len(variants)
        assert len({cache_namespace(s) for s in variants}) == len(variants)
        one = CachingEmbedder(Fake(), base, 1)
        assert one.key("same text") != one.key("same text ")

    def test_calibrate_disk_cache_keys_texts_like_the_daemon_cache(self, tmp_path: Path
                                                                   ) -> None:
        """`detector calibrate`'s SQLite cache keys a text as CachingEmbedder does, so a
        setting that changes the vector (here instruct) changes its key too."""
        base = EmbeddingSettings(backend="dashscope", model="text-embedding-v4", dimension=256)
        disk = EmbeddingCache(tmp_path / "e.sqlite", base, 256)
        instructed = EmbeddingCache(tmp_path / "e.sqlite",
                                    base.model_copy(update={"instruct": "Find spam"}), 256)
        try:
            assert disk.key("same text") == CachingEmbedder(Fake(), base, 1).key("same text").hex()
            assert instructed.key("same text") != disk.key("same text")
            disk.put(["same text"], np.ones((1, 256), dtype=np.float32))
            assert set(disk.get(["same text"])) == {"same text"}
            assert instructed.get(["same text"]) == {}
        finally:
            disk.close()
            instructed.close()

    def test_build_embedder_wraps_unless_turned_off(self) -> None:
        remote = {"backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
                  "api_key": "sk-x", "base_url": "http://127.0.0.1:9"}
        on = build_embedder(load_settings(None, embedding=remote))
        off = build_embedder(load_settings(None, embedding={**remote, "cache_entries": 0}))
        assert isinstance(on, CachingEmbedder)
        assert on.rows.capacity == 12_000
        assert not isinstance(off, CachingEmbedder)


KEY = "sk-cache"


@pytest.fixture
def api() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=KEY) as srv:
        yield srv


@pytest.mark.kafka
class TestSameResultsThroughTheDaemon:
    async def test_scores_alerts_and_centroid_identical_with_and_without_the_cache(
        self, kafka_bootstrap: str, new_topic: NewTopic, api: FakeEmbeddingServer
    ) -> None:
        """600 comments, 30 % of them repeats from a pool of 20: two detectors over the
        same topic, cache on and off, publish the same scores and alerts, end with the
        same centroid, and the cached one sends fewer texts."""
        topic = await new_topic(partitions=1)  # one order of scoring: one centroid path
        texts = [c.text for c in stream(600, anomaly_rate=0.05, seed=31)]
        pool = texts[:20]
        rng = np.random.default_rng(5)
        texts = [pool[int(rng.integers(20))] if rng.random() < 0.3 else t for t in texts]
        await produce(kafka_bootstrap, topic, [(f"k{i}".encode(), orjson.dumps({"text": t}))
                                               for i, t in enumerate(texts)])
        results = []
        for entries in (1000, 0):
            settings = detector_settings(kafka_bootstrap, topic, embedding={
                "backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
                "base_url": api.base_url, "api_key": KEY, "concurrency": 4,
                "cache_entries": entries}, scoring={"threshold": 0.05})
            assert settings.alerts.scores_topic is not None
            before = api.stats.texts
            embedder = build_embedder(settings)
            async with running_detector(settings, embedder) as det:
                await wait_for(lambda d=det: metric(d.metrics, "detector_records_scored_total")
                               >= 600, deadline_s=120, what="all scored")
                weight = metric(det.metrics, "detector_centroid_weight")
                version = metric(det.metrics, "detector_centroid_version")
            await embedder.aclose()
            count = int(metric(det.metrics, "detector_alerts_total"))
            scores = values(await read_topic(kafka_bootstrap, settings.alerts.scores_topic,
                                             at_least=600))
            alerts = values(await read_topic(kafka_bootstrap, settings.alerts.topic,
                                             at_least=count, deadline_s=30))
            by_offset = {(s["source"]["partition"], s["source"]["offset"]):
                         (s["similarity"], s["anomaly"], s["centroid_updated"],
                          s["centroid_version"]) for s in scores}
            alerted = sorted((a["source"]["partition"], a["source"]["offset"]) for a in alerts)
            results.append((by_offset, alerted, weight, version, api.stats.texts - before))
        (cached, cached_alerts, w1, v1, sent1), (plain, plain_alerts, w2, v2, sent2) = results
        assert len(cached) == 600
        assert cached == plain
        assert cached_alerts == plain_alerts
        assert cached_alerts, "the stream has anomalies, so the comparison covers alerts"
        assert (w1, v1) == (w2, v2)
        assert sent2 >= 600
        assert sent1 <= sent2 - 150
