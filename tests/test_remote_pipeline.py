"""The whole pipeline through the fake embedding API, on the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from structlog.testing import capture_logs

from detector.commands import run as app
from detector.config import Settings
from detector.embedders import build_embedder
from detector.exits import EXIT_FATAL_EMBEDDING
from detector.metrics import Metrics
from devtools.fakeapi import FakeEmbeddingServer
from devtools.sample_data import stream
from tests.helpers import (
    NewTopic,
    committed,
    detector_settings,
    metric,
    produce,
    read_topic,
    running_detector,
    values,
    wait_for,
)

pytestmark = pytest.mark.kafka
KEY = "sk-pipeline"


@pytest.fixture
def api() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=KEY, hang_s=3.0) as srv:
        yield srv


def remote_settings(bootstrap: str, topic: str, api: FakeEmbeddingServer,
                    embedding: dict[str, object] | None = None) -> Settings:
    section: dict[str, object] = {
        "backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
        "base_url": api.base_url, "api_key": KEY, "timeout_s": 1.0, "retry_base_s": 0.05,
        "retry_max_s": 0.3, "retry_deadline_s": 5.0, "concurrency": 4}
    section.update(embedding or {})
    return detector_settings(bootstrap, topic, embedding=section, scoring={"threshold": 0.05})


async def produce_comments(bootstrap: str, topic: str, n: int, marker_at: int | None = None
                           ) -> None:
    texts = [c.text for c in stream(n, anomaly_rate=0.05, seed=13)]
    if marker_at is not None:
        texts[marker_at] = "FORBIDDEN content here"
    await produce(bootstrap, topic, [(f"k{i}".encode(), orjson.dumps({"text": t}))
                                     for i, t in enumerate(texts)])


class TestRemotePipeline:
    @pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
    async def test_faults_lose_nothing_and_score_nothing_twice(
        self, kafka_bootstrap: str, new_topic: NewTopic, api: FakeEmbeddingServer, transport: str
    ) -> None:
        """with every transient fault injected mid-stream, each comment is scored once and
        the one rejected text alone is dead-lettered (on both HTTP transports)."""
        topic = await new_topic(partitions=2)
        settings = remote_settings(kafka_bootstrap, topic, api, {"http_transport": transport})
        embedder = build_embedder(settings)
        async with running_detector(settings, embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="ready")
            for fault in ("429", "rate_quota_400", "500", "hang", "reset", "truncated",
                          "not_json", "shuffle"):
                api.inject(fault, count=2)
            api.reject_marker = "FORBIDDEN"
            await produce_comments(kafka_bootstrap, topic, 400, marker_at=123)
            assert settings.alerts.scores_topic is not None
            scores = await read_topic(kafka_bootstrap, settings.alerts.scores_topic,
                                      at_least=399, deadline_s=90)
            letters = await read_topic(kafka_bootstrap, settings.alerts.dead_letter_topic,
                                       at_least=1, deadline_s=30)
        await embedder.aclose()
        keys = [(v["source"]["partition"], v["source"]["offset"]) for v in values(scores)]
        assert len(keys) == len(set(keys)) == 399, "every comment scored exactly once"
        [letter] = values(letters)
        assert letter["reason"] == "rejected:DataInspectionFailed"
        assert sum(api.stats.faults.values()) == 16
        assert api.stats.max_batch <= 10
        group = await committed(kafka_bootstrap, settings.kafka.group_id, topic, 2)
        assert sum(o or 0 for o in group.values()) == 400

    async def test_throttling_pauses_input_instead_of_buffering(
        self, kafka_bootstrap: str, new_topic: NewTopic, api: FakeEmbeddingServer
    ) -> None:
        """a long run of 429s pauses the partitions; batches in flight stay <= concurrency."""
        topic = await new_topic()
        # a reorder window of 4 batches (40 texts) fills well before the 300 are read
        settings = remote_settings(kafka_bootstrap, topic, api,
                                   embedding={"concurrency": 2, "retry_deadline_s": 30.0,
                                              "reorder_window": 4})
        api.inject("429", count=60)  # 60 x Retry-After 0.2 s = about 6 s of throttling
        embedder = build_embedder(settings)
        async with running_detector(settings, embedder) as det:
            await produce_comments(kafka_bootstrap, topic, 300)
            peak_inflight = 0.0
            paused_seen = False
            deadline = asyncio.get_running_loop().time() + 60
            while metric(det.metrics, "detector_records_scored_total") < 300:
                assert asyncio.get_running_loop().time() < deadline, "stream not finished"
                peak_inflight = max(peak_inflight, metric(det.metrics,
                                                          "detector_inflight_batches"))
                paused_seen |= metric(det.metrics, "detector_paused_partitions") > 0
                await asyncio.sleep(0.02)
        await embedder.aclose()
        assert paused_seen, "input was paused while throttled"
        assert peak_inflight <= 2
        assert api.stats.faults["429"] == 60

    async def test_fatal_auth_error_stops_consumption_with_a_clear_message(
        self, kafka_bootstrap: str, new_topic: NewTopic, api: FakeEmbeddingServer
    ) -> None:
        """Arrearage: input stops, readiness goes false, nothing past it is committed."""
        topic = await new_topic()
        # the second 50 comments repeat the first 50: without the cache they reach the API
        settings = remote_settings(kafka_bootstrap, topic, api, {"cache_entries": 0})
        await produce_comments(kafka_bootstrap, topic, 50)
        embedder = build_embedder(settings)
        stop = asyncio.Event()
        metrics = Metrics()
        with capture_logs() as logs:
            task = asyncio.create_task(app.run(settings, stop=stop, embedder=embedder,
                                               metrics=metrics))
            await wait_for(lambda: metric(metrics, "detector_ready") == 1, what="ready")
            api.inject("arrearage", count=1000)
            await produce_comments(kafka_bootstrap, topic, 50)
            await wait_for(lambda: metric(metrics, "detector_ready") == 0, what="not ready")
            scored = metric(metrics, "detector_records_scored_total")
            stop.set()
            code = await asyncio.wait_for(task, 60)
        await embedder.aclose()
        assert code == EXIT_FATAL_EMBEDDING
        assert scored < 100
        fatal = [e for e in logs if e["log_level"] == "error"]
        assert fatal
        assert "Arrearage" in fatal[0]["code"]
        assert KEY not in repr(logs)
        group = await committed(kafka_bootstrap, settings.kafka.group_id, topic)
        assert (group[0] or 0) <= scored, "no offset committed past unembedded records"
