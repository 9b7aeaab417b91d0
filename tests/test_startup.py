"""Start-up against a broker that appears late: the daemon, started from the chart's
rendered detector.yaml, survives the chart's rendered liveness probe while it waits, is
not ready until Kafka answers, then becomes ready; every log line of the run is JSON.
A start that refuses its calibration artifact leaves the cluster as it found it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient

from detector.commands import run as app
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from devtools.broker import LocalKafka, free_port
from tests.helpers import (
    NewTopic,
    create_topic,
    detector_settings,
    pod_spec,
    render,
    rendered_config,
    unique,
)

BROKER_DELAY_S = 90.0
FIELDS = {"event", "level", "logger", "timestamp"}


def status(port: int, path: str) -> int | None:
    """The probe's view: an HTTP status, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


class Kubelet:
    """Plays one probe: first run at initialDelaySeconds, then every periodSeconds; the
    container is restarted at failureThreshold consecutive failures."""

    def __init__(self, probe: dict[str, Any], port: int, started: float) -> None:
        self.path = probe["httpGet"]["path"]
        self.period = probe["periodSeconds"]
        self.threshold = probe["failureThreshold"]
        self.port = port
        self.next_at = started + probe["initialDelaySeconds"]
        self.failures = 0
        self.worst = 0
        self.results: list[int | None] = []

    def tick(self, now: float) -> None:
        if now < self.next_at:
            return
        self.next_at += self.period
        code = status(self.port, self.path)
        self.results.append(code)
        self.failures = 0 if code == 200 else self.failures + 1
        self.worst = max(self.worst, self.failures)
        assert self.failures < self.threshold, (
            f"the kubelet would restart the container: {self.failures} consecutive "
            f"failures of {self.path} (results {self.results})")


@pytest.mark.kafka
@pytest.mark.slow
def test_broker_appearing_after_90s_keeps_the_pod_alive(tmp_path: Path) -> None:
    """the chart's rendered detector.yaml and probes: the broker is away for the first
    90 s; the liveness probe never reaches its failure threshold, readiness stays 503
    until Kafka answers, then turns 200; SIGTERM stops it cleanly; every line of the
    run's log (aiokafka's connection errors included) is JSON with the same fields."""
    docs = render()
    [container] = pod_spec(docs)["containers"]
    config = tmp_path / "detector.yaml"
    config.write_text(rendered_config(docs))
    kafka = LocalKafka(work_dir=tmp_path / "kafka", heap="512m")
    topic = unique("comments")
    kafka.start()  # once, to create the input topic; then away until BROKER_DELAY_S
    try:
        asyncio.run(create_topic(kafka.bootstrap_servers, topic))
    finally:
        kafka.stop()
    port = free_port()
    env = {**os.environ,
           "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "DETECTOR_KAFKA__GROUP_ID": unique("g"),
           "DETECTOR_KAFKA__GROUP_INSTANCE_ID": "rel-detector-0",
           # one test broker: the chart's 3 replicas cannot be placed
           "DETECTOR_KAFKA__TOPIC_REPLICATION_FACTOR": "1",
           "DETECTOR_KAFKA__TOPIC_MIN_INSYNC_REPLICAS": "1",
           "DETECTOR_INPUT__TOPIC": topic,
           "DETECTOR_ALERTS__TOPIC": unique("alerts"),
           "DETECTOR_ALERTS__DEAD_LETTER_TOPIC": unique("dlq"),
           "DETECTOR_STATE__TOPIC": unique("state"),
           "DETECTOR_SCORING__SEED_FILE": "config/normal_comments.jsonl",
           "DETECTOR_SERVER__HOST": "127.0.0.1", "DETECTOR_SERVER__PORT": str(port)}
    log_path = tmp_path / "detector.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "--config", str(config),
                                 "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    liveness = Kubelet(container["livenessProbe"], port, started)
    readiness = Kubelet({**container["readinessProbe"], "failureThreshold": 10**6}, port,
                        started)
    try:
        while time.monotonic() - started < BROKER_DELAY_S:
            assert proc.poll() is None, log_path.read_text()
            liveness.tick(time.monotonic())
            readiness.tick(time.monotonic())
            time.sleep(0.5)  # the probes' clock, not synchronisation
        assert liveness.results
        assert liveness.results[-1] == 200
        assert set(readiness.results) == {503}, "ready before Kafka answered"
        kafka.start()
        deadline = started + float(
            yaml.safe_load(rendered_config(docs))["kafka"]["connect_deadline_s"]) + 30
        while readiness.results[-1] != 200:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            assert proc.poll() is None, log_path.read_text()[-3000:]
            liveness.tick(time.monotonic())
            readiness.tick(time.monotonic())
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kafka.stop()
    records = [orjson.loads(line) for line in log_path.read_text().splitlines()]
    assert all(set(r) >= FIELDS for r in records)
    loggers = {r["logger"] for r in records}
    assert any(name.startswith("aiokafka") for name in loggers), loggers
    events = [r["event"] for r in records]
    assert "kafka not reachable, retrying" in events
    assert "detector stopped" in events


async def topics(bootstrap: str) -> set[str]:
    """The cluster's topics (a metadata request for all topics creates none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.kafka
class TestRefusedArtifact:
    async def test_a_refused_artifact_stops_the_start_before_any_topic_is_created(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """`detector run` with a calibration artifact made with another model stops with
        the reason, and creates neither its output topics nor its state topic first."""
        path = tmp_path / "other.json"
        path.write_bytes(orjson.dumps({
            "schema": "detector.calibration/v1",
            "centroid": {"dimension": 2, "sum": [1.0, 0.0], "weight": 1.0, "version": 0,
                         "decay": 1.0},
            "threshold": 0.3, "method": "target_fpr", "target": 0.01,
            "model": {"name": "text-embedding-v4", "dimension": 2},
            "counts": {"train": 1, "holdout": 1, "anomalies": 0}, "metrics": {},
            "created_at": "2026-01-01T00:00:00+00:00"}))
        settings = detector_settings(
            kafka_bootstrap, await new_topic(), kafka={"create_topics": True},
            scoring={"calibration_file": str(path)},
            state={"enabled": True, "topic": unique("state")},
            drift={"enabled": True}, alerts={"drift_topic": unique("drift")})
        wanted = {settings.alerts.topic, settings.alerts.dead_letter_topic,
                  settings.alerts.scores_topic, settings.alerts.drift_topic,
                  settings.state.topic}
        assert not wanted & await topics(kafka_bootstrap)
        with pytest.raises(ConfigError, match="text-embedding-v4"):
            await app.run(settings, embedder=local_embedder)
        assert not wanted & await topics(kafka_bootstrap)
