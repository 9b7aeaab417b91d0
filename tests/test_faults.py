"""Faults around a running detector: the broker restarts, the embedding API goes down for
30 s, and secrets never reach logs or error output."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from detector.embedders import build_embedder
from detector.embedders.local import LocalEmbedder
from devtools.broker import LocalKafka
from devtools.fakeapi import FakeEmbeddingServer
from devtools.sample_data import stream
from tests.helpers import (
    NewTopic,
    RecordingEmbedder,
    committed,
    create_topic,
    detector_settings,
    metric,
    produce,
    read_topic,
    running_detector,
    unique,
    values,
    wait_for,
)
from tests.procs import DetectorProcess

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
SECRET = "sk-never-print-me-7f3a9c"


def comments(n: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(str(i).encode(), orjson.dumps({"text": c.text}))
            for i, c in enumerate(stream(n, anomaly_rate=0.05, seed=seed))]


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> str:
    """The tests of the HTTP API run on both values of embedding.http_transport."""
    value: str = request.param
    return value


@pytest.fixture
def api() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=SECRET, hang_s=2.0) as srv:
        yield srv


class TestBrokerRestart:
    async def test_detector_recovers_without_restart_and_loses_nothing(
        self, kafka_bootstrap: str, new_topic: NewTopic, restartable_kafka: LocalKafka,
        local_embedder: LocalEmbedder,
    ) -> None:
        """stop and start the broker mid-stream: the same detector finishes the stream."""
        topic = await new_topic(partitions=2)
        settings = detector_settings(kafka_bootstrap, topic)
        assert settings.alerts.scores_topic is not None
        await produce(kafka_bootstrap, topic, comments(3000, 1))
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") > 500,
                           what="part of the stream")
            await asyncio.to_thread(restartable_kafka.restart)
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") >= 3000,
                           deadline_s=180, what="the rest after the restart")
            assert not det.task.done()
            scores = values(await read_topic(kafka_bootstrap, settings.alerts.scores_topic,
                                             at_least=3000, deadline_s=60))
        seen = {(s["source"]["partition"], s["source"]["offset"]) for s in scores}
        assert len(seen) == 3000


class TestEmbeddingOutage:
    async def test_thirty_second_outage_pauses_keeps_membership_and_resumes(
        self, kafka_bootstrap: str, new_topic: NewTopic, api: FakeEmbeddingServer, transport: str
    ) -> None:
        """500s and hangs for 30 s: input pauses, in-flight stays bounded, the group is not
        rebalanced, and every comment is scored once the API is back."""
        topic = await new_topic(partitions=2)
        settings = detector_settings(kafka_bootstrap, topic, embedding={
            "backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
            "base_url": api.base_url, "api_key": SECRET, "timeout_s": 1.0,
            "retry_base_s": 0.1, "retry_max_s": 1.0, "retry_deadline_s": 5.0,
            "concurrency": 4, "http_transport": transport}, scoring={"threshold": 0.05})
        assert settings.alerts.scores_topic is not None
        embedder = build_embedder(settings)
        async with running_detector(settings, embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="ready")
            await produce(kafka_bootstrap, topic, comments(500, 2))
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") > 100,
                           what="part of the stream")
            api.inject("hang", count=20)  # first hangs past the client timeout, then 500s
            api.inject("500", count=100_000)
            outage_end = time.monotonic() + 30
            await produce(kafka_bootstrap, topic, comments(1500, 3))
            peak_inflight, paused = 0.0, False
            while time.monotonic() < outage_end:
                peak_inflight = max(peak_inflight, metric(det.metrics,
                                                          "detector_inflight_batches"))
                paused |= metric(det.metrics, "detector_paused_partitions") > 0
                assert metric(det.metrics, "detector_ready") == 1, "membership kept"
                await asyncio.sleep(0.1)
            during = metric(det.metrics, "detector_records_scored_total")
            api.clear()
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") >= 2000,
                           deadline_s=120, what="recovery")
            scores = values(await read_topic(kafka_bootstrap, settings.alerts.scores_topic,
                                             at_least=2000, deadline_s=60))
        await embedder.aclose()
        assert paused, "input paused during the outage"
        assert peak_inflight <= 4, "memory bounded by concurrency x batch_size"
        assert during < 2000
        seen = {(s["source"]["partition"], s["source"]["offset"]) for s in scores}
        assert len(seen) == len(scores) == 2000


def dashscope_process(bootstrap: str, topic: str, api: FakeEmbeddingServer, log_path: Path,
                      transport: str, *, embedding: dict[str, object] | None = None,
                      **more: object) -> DetectorProcess:
    """A started `detector run` child embedding through the fake DashScope API with the
    test key, in its own group, without state sync."""
    return DetectorProcess({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": unique("g")},
        "input": {"topic": topic},
        "embedding": {"backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
                      "base_url": api.base_url, "api_key": SECRET, "http_transport": transport,
                      **(embedding or {})},
        "state": {"enabled": False}, **more,
    }, log_path).start()


class TestPublishFailure:
    async def test_a_refused_alert_is_resent_and_holds_the_commit_until_acknowledged(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """the alerts topic refuses the alert (message size limit): the detector keeps
        resending, commits nothing past it, and delivers it once the topic accepts it."""
        topic = await new_topic()
        alerts = await new_topic(**{"max.message.bytes": "200"})
        texts = [c.text for c in stream(20, anomaly_rate=0.0, seed=21)]
        texts.insert(10, "asdfghjkl zxcvbnm qwertyuiop")
        await produce(kafka_bootstrap, topic, [(None, orjson.dumps({"text": t})) for t in texts])
        settings = detector_settings(kafka_bootstrap, topic, alerts={"topic": alerts})
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_publish_retries_total") >= 2,
                           what="resends of the refused alert")
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 21,
                           what="every comment scored")
            group = await committed(kafka_bootstrap, settings.kafka.group_id, topic)
            assert (group[0] or 0) <= 10, f"committed past the unacknowledged alert: {group}"
            assert metric(det.metrics, "detector_alerts_total") == 0
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.alter_configs([ConfigResource(
                    ConfigResourceType.TOPIC, alerts, {"max.message.bytes": "1048576"})])
            finally:
                await admin.close()
            await wait_for(lambda: metric(det.metrics, "detector_alerts_total") == 1,
                           deadline_s=60, what="the alert acknowledged after the change")
        published = values(await read_topic(kafka_bootstrap, alerts, at_least=1))
        assert [a["source"]["offset"] for a in published] == [10]
        assert (await committed(kafka_bootstrap, settings.kafka.group_id, topic)) == {0: 21}


class TestSecrets:
    def test_api_key_never_in_logs_or_errors(
        self, kafka_bootstrap: str, tmp_path: Path, api: FakeEmbeddingServer, transport: str
    ) -> None:
        """a detector failing auth with a wrong key, and `detector config`, never print it."""
        api.api_key = "sk-server-expects-another"
        topic = unique("secret-topic")
        asyncio.run(create_topic(kafka_bootstrap, topic))
        proc = dashscope_process(kafka_bootstrap, topic, api, tmp_path / "detector.log",
                                 transport, log={"level": "debug"})
        try:
            end = time.monotonic() + 60
            while "InvalidApiKey" not in proc.tail(200) and time.monotonic() < end:
                time.sleep(0.2)
        finally:
            proc.terminate()
        log = (tmp_path / "detector.log").read_text()
        assert "InvalidApiKey" in log
        assert SECRET not in log
        shown = subprocess.run([sys.executable, "-m", "detector.cli", "config"],
                               env={**proc.env}, capture_output=True, text=True, check=True)
        assert SECRET not in shown.stdout + shown.stderr
        assert "**********" in shown.stdout


class TestSignals:
    def test_sigterm_drains_and_a_second_signal_exits_at_once(
        self, kafka_bootstrap: str, tmp_path: Path, api: FakeEmbeddingServer, transport: str
    ) -> None:
        """with embedding stuck, SIGTERM starts a drain; a second SIGTERM ends it now."""
        api.hang_s = 120.0
        topic = unique("signals")
        asyncio.run(create_topic(kafka_bootstrap, topic))
        proc = dashscope_process(kafka_bootstrap, topic, api, tmp_path / "detector.log",
                                 transport, embedding={"timeout_s": 100.0},
                                 shutdown_timeout_s=60,
                                 alerts={"topic": unique("a"), "dead_letter_topic": unique("d")})
        try:
            proc.wait_ready()
            api.inject("hang", count=10)
            asyncio.run(produce(kafka_bootstrap, topic, comments(20, 4)))
            end = time.monotonic() + 30
            while api.stats.requests == api.stats.ok and time.monotonic() < end:
                time.sleep(0.1)  # until an embedding call is stuck in the hang
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            end = time.monotonic() + 10
            while "draining and stopping" not in proc.tail(50) and time.monotonic() < end:
                time.sleep(0.05)
            assert "draining and stopping" in proc.tail(50)
            assert proc.proc.poll() is None, "first SIGTERM drains, it does not exit"
            started = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            code = proc.proc.wait(timeout=10)
        finally:
            proc.kill()
        assert code == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
        assert "second signal" in proc.tail(50)
