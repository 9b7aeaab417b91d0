"""Test helpers around a real broker: produce, read back, run a detector in-process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord, TopicPartition

from detector.commands import run as app
from detector.config import Settings, load_settings
from detector.embedders.base import Embedder, Matrix
from detector.metrics import Metrics

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


def metric_sum(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    """The sum of the samples of `name` whose labels include `labels` (any other labels)."""
    return sum(sample.value for family in metrics.registry.collect()
               for sample in family.samples if sample.name == name
               and all(sample.labels.get(k) == v for k, v in labels.items()))
