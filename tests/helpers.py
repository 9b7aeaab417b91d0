"""Helpers shared by test modules (test modules never import each other): a real
broker's topics (produce, read back, run a detector in-process), unit vectors and
artifacts without a broker, a fake sink and committer for the outbox, sample comments of
two populations, and the rendered Helm chart."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin import NewTopic as TopicSpec
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, TopicPartition

from detector.calibration import artifact as cal
from detector.commands import run as app
from detector.config import Settings, load_settings
from detector.embedders.base import Embedder, Matrix
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.centroid import Centroid
from detector.model.scorer import Scorer, Verdict
from detector.operating import startup
from detector.operating.labels import FeedbackStage
from detector.state.store import SharedCentroid
from detector.stream.delivery import Gate, Outbox, Work
from devtools.sample_data import normal_comment

NewTopic = Callable[..., Awaitable[str]]  # the new_topic fixture: a fresh topic's name


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def detector_settings(bootstrap: str, input_topic: str, **overrides: Any) -> Settings:
    """Settings for a test detector with its own group and output topics."""
    sections: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": unique("g"),
                  "commit_interval_ms": 200},
        "input": {"topic": input_topic},
        "alerts": {"topic": unique("alerts"), "dead_letter_topic": unique("dlq"),
                   "scores_topic": unique("scores")},
        "server": {"enabled": False},
        "state": {"enabled": False},
        "shutdown_timeout_s": 20.0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return load_settings("config/detector.yaml", **sections)


async def produce(bootstrap: str, topic: str, items: Sequence[tuple[bytes | None, bytes | None]],
                  partition: int | None = None) -> list[tuple[int, int]]:
    """Send (key, value) pairs in order; returns (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=partition)
                   for k, v in items]
        metas = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, *, at_least: int, deadline_s: float = 60.0,
                     read_committed: bool = True) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` once at least `at_least` are there (or the deadline passes)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
            if len(out) >= at_least:
                # drain whatever else is already there, then stop
                more = await consumer.getmany(timeout_ms=300)
                for records in more.values():
                    out.extend(records)
                if not more:
                    break
        return out
    finally:
        await consumer.stop()


def values(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 1
                    ) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


@dataclass
class RecordingEmbedder:
    """Wraps an embedder and records each call's batch size and duration; `delay_s` makes
    every call that much slower (a slow provider)."""

    inner: Embedder
    delay_s: float = 0.0
    sizes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def embed(self, texts: Sequence[str]) -> Matrix:
        started = time.monotonic()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = await self.inner.embed(texts)
        self.sizes.append(len(texts))
        self.seconds.append(time.monotonic() - started)
        return out

    async def aclose(self) -> None:
        """The wrapped embedder is owned by the test session."""


@dataclass
class RunningDetector:
    settings: Settings
    metrics: Metrics
    stop: asyncio.Event
    task: asyncio.Task[int]


@asynccontextmanager
async def running_detector(settings: Settings, embedder: Embedder
                           ) -> AsyncIterator[RunningDetector]:
    """Run `detector.commands.run.run` as a task; stop it gracefully on exit."""
    stop = asyncio.Event()
    metrics = Metrics()
    task = asyncio.create_task(app.run(settings, stop=stop, embedder=embedder, metrics=metrics))
    running = RunningDetector(settings, metrics, stop, task)
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def wait_for(predicate: Any, deadline_s: float = 60.0, what: str = "condition") -> None:
    """Poll `predicate()` (sync or async) until true or fail at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    msg = f"timed out after {deadline_s}s waiting for {what}"
    raise AssertionError(msg)


async def topic_configs(bootstrap: str, topic: str, deadline_s: float = 30.0) -> dict[str, str]:
    """A topic's configuration as the broker describes it. Right after CreateTopics the
    broker answering may not know the topic yet (an error code and no entries), so poll
    until it does."""
    described: dict[str, str] = {}

    async def known() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)])
        finally:
            await admin.close()
        [resource] = response.resources
        if resource[0] != 0:  # e.g. UNKNOWN_TOPIC_OR_PARTITION while metadata propagates
            return False
        described.update({entry[0]: str(entry[1]) for entry in resource[4]})
        return True

    await wait_for(known, deadline_s, what=f"the broker to describe topic {topic}")
    return described


def metric(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# Unit vectors and calibration artifacts of a small fake model (no broker, no embedder).

DIM = 32
MODEL = "fake-model"


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return out


def artifact(direction: np.ndarray, seed: int, *, model: str = MODEL
             ) -> cal.CalibrationArtifact:
    rng = np.random.default_rng(seed)
    rows = unit(direction * 2.0 + rng.normal(size=(900, DIM)) * 0.5)
    return cal.calibrate(rows[:600], rows[600:], None, model=model, dimension=DIM,
                         bootstrap=10, seed=seed).artifact


# The outbox without a broker: a sink whose futures the test resolves, a committer.

TP = TopicPartition("comments", 0)


class FakeSink:
    """Hands out one future per send, resolved by the test; refuses the first `refuse`."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, bytes, asyncio.Future[Any]]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None
                   ) -> asyncio.Future[Any]:
        if self.refuse:
            self.refuse -= 1
            raise KafkaTimeoutError
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, value, future))
        return future

    def ack_all(self) -> None:
        for _, _, future in self.sent:
            if not future.done():
                future.set_result(None)


class FakeCommitter:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            raise KafkaError("transaction fenced")
        self.commits.append(dict(offsets))


def outbox(sink: FakeSink, committer: FakeCommitter, *, gate: Gate | None = None,
           metrics: Metrics | None = None, sleeps: list[float] | None = None) -> Outbox:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    return Outbox(sink, committer, metrics or Metrics(), alerts_topic="alerts",
                  assigned=lambda: {TP}, gate=gate, sleep=sleep)


def work(box: Outbox, offset: int, *topics: str) -> Work:
    generation = box.track(TP, offset)
    source = rec.Source(TP.topic, TP.partition, offset, 0, None)
    return (source, generation, [(t, None, f"{t}-{offset}".encode()) for t in topics])


# Ordinary comments of two populations: shop reviews (the majority) and medication
# reviews (a minority key with its own baseline).

_DRUGS = ["ibuprofen", "metformin", "sertraline", "lisinopril", "omeprazole", "atorvastatin",
          "levothyroxine", "amoxicillin"]
_CONDITIONS = ["my back pain", "type 2 diabetes", "anxiety", "high blood pressure",
               "acid reflux", "high cholesterol", "an underactive thyroid", "a chest infection"]
_EFFECTS = ["the symptoms eased within a week", "I had mild nausea for the first days",
            "it made me dizzy in the mornings", "my readings are back to normal",
            "I sleep better since I started", "the side effects were worse than the illness"]


def drug_comment(rng: random.Random) -> str:
    """An ordinary comment of the minority population: a patient's medication review."""
    return (f"I have been taking {rng.choice(_DRUGS)} for {rng.choice(_CONDITIONS)} and "
            f"{rng.choice(_EFFECTS)}.")


def shop_comments(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [normal_comment(rng) for _ in range(n)]


def drug_comments(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [drug_comment(rng) for _ in range(n)]


# The Helm chart, rendered with `helm template`.

CHART = Path("helm/detector")
Doc = dict[str, Any]


def helm() -> str:
    """The helm binary: $HELM, else .cache/bin/helm, else PATH. Missing helm is a failure."""
    for candidate in (os.environ.get("HELM"), ".cache/bin/helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("helm not found: run `bash scripts/ensure-helm.sh` (make test does), "
                "or point $HELM at a helm binary")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False,
                          timeout=120)


@functools.cache
def render(*args: str) -> tuple[Doc, ...]:
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    [doc] = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def pod_spec(docs: tuple[Doc, ...], kind: str = "StatefulSet") -> Doc:
    spec: Doc = one(docs, kind)["spec"]["template"]["spec"]
    return spec


def rendered_config(docs: tuple[Doc, ...]) -> str:
    text: str = one(docs, "ConfigMap", "rel-detector")["data"]["detector.yaml"]
    return text


def metric_sum(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    """The sum of the samples of `name` whose labels include `labels` (any other labels)."""
    return sum(sample.value for family in metrics.registry.collect()
               for sample in family.samples if sample.name == name
               and all(sample.labels.get(k) == v for k, v in labels.items()))


# Operator labels without a broker: a replica with its feedback stage, label records.

class FixedEmbedder:
    """Embeds every text as one fixed unit vector."""

    name = MODEL
    dimension = DIM

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls += 1
        return np.tile(self.vector.astype(np.float32), (len(texts), 1))

    async def aclose(self) -> None:
        pass


def label(**body: object) -> bytes:
    return orjson.dumps({"schema": "detector.feedback/v1", **body})


class FakeSources:
    """The input topic as the feedback stage reads it back: committed positions and the
    records' texts by (partition, offset)."""

    def __init__(self) -> None:
        self.positions: dict[int, int] = {}
        self.texts: dict[tuple[int, int], str] = {}

    def consumed(self, partition: int, offset: int, text: str) -> None:
        self.texts[(partition, offset)] = text
        self.positions[partition] = max(self.positions.get(partition, 0), offset + 1)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.positions.get(tp.partition)

    async def fetch(self, position: rec.Position) -> FakeRecord | None:
        text = self.texts.get((position.partition, position.offset))
        if text is None:
            return None
        return FakeRecord(orjson.dumps({"text": text}), None, position.topic,
                          position.partition, position.offset)


class Replica:
    def __init__(self, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.direction, self.other = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
        first = artifact(self.direction, seed)
        s = Settings(name="fb", feedback={"enabled": True, "weight": 50, "max_pending": 2,
                                          "pending_s": 30})
        centroid = Centroid.from_dict(first.centroid)
        self.baselines = startup.build(s.scoring, centroid, first.threshold, artifact=first,
                                       replica="r1",
                                       memory=startup.label_memory(s.feedback, DIM,
                                                                   artifact=first))
        self.shared = SharedCentroid(self.baselines.global_, "r1", "base", MODEL)
        self.scorer = Scorer.from_settings(s, rec.Context("d", "0", MODEL, DIM),
                                           baselines=self.baselines)
        self.sent: list[rec.Message] = []
        self.metrics = Metrics()
        self.embedder = FixedEmbedder(self.other)
        self.sources = FakeSources()
        self.clock = [0.0]
        self.stage = FeedbackStage(s, self.baselines, self.metrics, embedder=self.embedder,
                                   emit=self.sent.extend,
                                   context=rec.Context("d", "0", MODEL, DIM),
                                   owned=lambda: frozenset({TopicPartition("comments", 0)}),
                                   shared=self.shared, sources=self.sources,
                                   clock=lambda: self.clock[0])

    def score(self, rows: np.ndarray, start: int = 0) -> list[float]:
        return [v.similarity or 0.0 for v in self.verdicts(rows, start)]

    def verdicts(self, rows: np.ndarray, start: int = 0) -> list[Verdict]:
        """Score rows as comments at offsets `start`, ... (text ``t``) of partition 0."""
        items = [(rec.Comment(rec.Source("comments", 0, start + i, 0, None), "t",
                              f"c{start + i}"), row) for i, row in enumerate(rows)]
        verdicts = self.scorer.score(items)
        self.stage.observe(items, verdicts)
        return verdicts


# A Kafka record as the decoder sees it.

@dataclass
class FakeRecord:
    value: bytes | None
    key: bytes | None = b"k1"
    topic: str = "comments"
    partition: int = 0
    offset: int = 42
    timestamp: int = 1_700_000_000_000


async def create_topic(bootstrap: str, name: str) -> None:
    """One topic of one partition, replication 1."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([TopicSpec(name, 1, 1)])
    finally:
        await admin.close()
