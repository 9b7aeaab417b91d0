"""Shared centroid state in a compacted Kafka topic: one centroid across replicas.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.io.kafka import connection_kwargs, ensure_topics, reader_consumer, topic_partitions
from detector.io.optional import wait_for_topic
from detector.io.records import Position, utc_now
from detector.metrics import Metrics
from detector.model.baselines import Baseline, Contribution
from detector.model.centroid import Centroid
from detector.model.reservoir import Reservoir
from detector.state import chunks
from detector.state.label_records import SharedLabels, record_key, source_of_key
from detector.state.published import is_published
from detector.state.sharing import ExemplarChunk, KeyRecord, SharedBaselines
from detector.state.sharing import parse as parse_shared

log = structlog.get_logger("detector.state.store")

STATE_SCHEMA = "detector.state/v2"
COMPACTED = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
             "segment.ms": "3600000"}


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One replica's published state."""

    replica: str
    base: str
    model: str
    dimension: int
    threshold: float
    contribution: Contribution
    saved_at: str
    # next offset per feedback-topic partition, of the labels this contribution includes
    feedback: dict[int, int] = field(default_factory=dict)

    def to_bytes(self, name: str) -> bytes:
        c = self.contribution
        extra: dict[str, Any] = {}
        if self.feedback:
            extra["feedback"] = {str(p): o for p, o in sorted(self.feedback.items())}
        return orjson.dumps({**extra,
            "schema": STATE_SCHEMA, "name": name, "replica": self.replica, "base": self.base,
            "model": {"name": self.model, "dimension": self.dimension},
            "threshold": self.threshold,
            "contribution": {"sum": [float(v) for v in c.sum], "weight": c.weight,
                             "updates": c.updates},
            "saved_at": self.saved_at,
        })

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReplicaRecord:
        body: dict[str, Any] = orjson.loads(raw)
        if body.get("schema") != STATE_SCHEMA:
            msg = f"unknown state schema {body.get('schema')!r}"
            raise ValueError(msg)
        c = body["contribution"]
        return cls(str(body["replica"]), str(body["base"]), str(body["model"]["name"]),
                   int(body["model"]["dimension"]), float(body["threshold"]),
                   Contribution(np.asarray(c["sum"], dtype=np.float64), float(c["weight"]),
                                int(c["updates"])), str(body["saved_at"]),
                   {int(p): int(o) for p, o in body.get("feedback", {}).items()})


@dataclass
class SharedCentroid:
    """The global baseline's live centroid plus the bookkeeping that keeps replicas' views
    merged. This replica's own contribution is the baseline's (`Baseline.own`, counted by
    its accepted comments and by labels), so there is one account of it."""

    baseline: Baseline
    replica: str
    base: str
    model: str
    applied: dict[str, Contribution] = field(default_factory=dict)
    feedback: dict[int, int] = field(default_factory=dict)  # label positions (labelling)

    @classmethod
    def around(cls, centroid: Centroid, replica: str, base: str, model: str) -> SharedCentroid:
        """Shared bookkeeping for a bare centroid (replay's snapshot restore, tests): its
        baseline's one-slot reservoir is never read."""
        return cls(Baseline(None, centroid, Reservoir(1, centroid.dimension)), replica, base,
                   model)

    @property
    def centroid(self) -> Centroid:
        return self.baseline.centroid

    @property
    def own(self) -> Contribution:
        return self.baseline.own

    def fits(self, record: ReplicaRecord) -> bool:
        return (record.base, record.model, record.dimension) == (
            self.base, self.model, self.centroid.dimension)

    def apply(self, record: ReplicaRecord) -> bool:
        """Merge the change in another replica's cumulative contribution since last time."""
        if record.replica == self.replica or not self.fits(record):
            return False
        previous = self.applied.get(record.replica, Contribution.zero(self.centroid.dimension))
        delta = record.contribution.minus(previous)
        if delta.updates <= 0:
            return False  # an older or repeated record
        self.centroid.merge(delta.sum, delta.weight, delta.updates)
        self.applied[record.replica] = record.contribution
        return True

    def restore(self, records: dict[str, ReplicaRecord]) -> list[str]:
        """At start: add every fitting replica's contribution, our own included.

        Returns the replicas whose records were ignored because their base or model
        differ from the configuration.
        """
        ignored = []
        for replica in sorted(records):
            record = records[replica]
            if not self.fits(record):
                ignored.append(replica)
                continue
            c = record.contribution
            if replica == self.replica:
                self.baseline.restore(c)
                self.feedback.update(record.feedback)
            else:
                self.centroid.merge(c.sum, c.weight, c.updates)
                self.applied[replica] = c
        return ignored

    def rebase(self, base: str) -> None:
        """A new calibration was adopted (the baseline was rebased on it): merge on `base`
        from now on, no other replica's contribution applied yet."""
        self.base = base
        self.applied = {}

    def record(self, threshold: float) -> ReplicaRecord:
        own = self.own.copy()
        return ReplicaRecord(self.replica, self.base, self.model, self.centroid.dimension,
                             threshold, own, utc_now(), dict(self.feedback))


class StateStore:
    """Reads, tails and writes the state topic for one detector name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.state.topic
        self.prefix = f"{settings.name}/".encode()
        self._ends: dict[TopicPartition, int] = {}
        # per-key and exemplar records read by `load`, newest per record key
        self.shared: dict[bytes, KeyRecord | ExemplarChunk] = {}
        # the newest published calibration artifact (detector.state.published), raw
        self.calibration: bytes | None = None
        # artifacts too large for one record come in parts (detector.state.chunks)
        self._parts = chunks.Reassembler()
        # label records read and not applied yet, newest last (None: a tombstone)
        self.labels: dict[Position, bytes | None] = {}

    async def ensure_topic(self) -> list[str]:
        """Create the compacted state topic when missing; return it if it was created."""
        return await ensure_topics(self.settings.kafka, {self.topic: COMPACTED}, partitions=1)

    def _consumer(self) -> AIOKafkaConsumer:
        return reader_consumer(self.settings.kafka)

    async def _exists(self) -> bool:
        """Whether the state topic exists (asking for every topic, so a broker that
        auto-creates topics does not create it uncompacted)."""
        kafka = self.settings.kafka
        admin = AIOKafkaAdminClient(**connection_kwargs(kafka), client_id=kafka.client_id)
        await admin.start()
        try:
            return self.topic in await admin.list_topics()
        finally:
            await admin.close()

    async def load(self) -> dict[str, ReplicaRecord]:
        """The newest record of every replica of this detector (read to the end once); a
        state topic that does not exist yet reads as empty."""
        if not await self._exists():
            return {}
        partitions = await topic_partitions(self.settings.kafka, self.topic)
        if not partitions:
            return {}
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer = self._consumer()
        await consumer.start()
        latest: dict[str, ReplicaRecord] = {}
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._ends = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if self._ends[tp] > 0}
            async with asyncio.timeout(60):
                while remaining:
                    fetched = await consumer.getmany(timeout_ms=500)
                    for records in fetched.values():
                        for r in records:
                            self._keep(r.key, r.value, latest)
                    for tp in list(remaining):
                        if await consumer.position(tp) >= self._ends[tp]:
                            remaining.discard(tp)
        finally:
            await consumer.stop()
        return latest

    def _keep(self, key: bytes | None, value: bytes | None,
              latest: dict[str, ReplicaRecord],
              on_calibration: Callable[[bytes], object] | None = None) -> ReplicaRecord | None:
        if key is None or not key.startswith(self.prefix):
            return None
        labelled = source_of_key(self.settings.name, key)
        if labelled is not None:  # a label record, or its tombstone
            self.labels.pop(labelled, None)
            self.labels[labelled] = value
            return None
        if value is None:
            return None
        if chunks.is_part(value):
            self._parts.part(value)
            return None
        if chunks.is_head(value) or is_published(value):
            try:
                value = self._parts.head(value)
            except chunks.IncompleteError as exc:
                log.warning("ignoring incomplete published calibration", error=str(exc))
                return None
            self.calibration = value
            if on_calibration is not None:
                on_calibration(value)
            return None
        try:
            shared = parse_shared(value)
            if shared is not None:
                self.shared[key] = shared
                return None
            record = ReplicaRecord.from_bytes(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable state record", key=key.decode(errors="replace"),
                        error=str(exc))
            return None
        latest[record.replica] = record
        return record

    def restore_shared(self, baselines: SharedBaselines) -> int:
        """Apply the per-key and exemplar records `load` read (ours and the others');
        returns how many fitted."""
        applied = 0
        for record in self.shared.values():
            own = record.scope.replica == baselines.scope.replica
            applied += baselines.apply(record, own=own) or own
        self.shared.clear()
        return applied

    def restore_labels(self, labels: SharedLabels) -> int:
        """Apply the label records `load` read (every replica's); returns how many changed
        the memory."""
        return self._apply_labels(labels, restoring=True)

    def _apply_labels(self, labels: SharedLabels | None, *, restoring: bool = False) -> int:
        applied = 0
        for source, raw in self.labels.items():
            if labels is None:
                continue
            try:
                applied += labels.apply(source, raw, restoring=restoring)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable label record", source=list(source.astuple()),
                            error=str(exc))
        self.labels.clear()
        return applied

    async def follow(self, shared: SharedCentroid,
                     baselines: SharedBaselines | None = None,
                     on_calibration: Callable[[bytes], object] | None = None,
                     metrics: Metrics | None = None,
                     labels: SharedLabels | None = None) -> None:
        """Apply other replicas' records as they arrive, and hand newly published artifacts
        to `on_calibration` (runs until cancelled). A state topic that does not exist yet
        (`kafka.create_topics: false`) is waited for with back-off (detector.io.optional),
        then read from its beginning."""
        tps = list(self._ends)
        if not tps:
            partitions, _ = await wait_for_topic(self.settings.kafka, self.topic,
                                                 reader="state", metrics=metrics)
            tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer = self._consumer()
        await consumer.start()
        try:
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, self._ends.get(tp, 0))
            seen: dict[str, ReplicaRecord] = {}
            while True:
                fetched = await consumer.getmany(timeout_ms=1000)
                for records in fetched.values():
                    for r in records:
                        record = self._keep(r.key, r.value, seen, on_calibration)
                        if record is not None and record.replica != shared.replica \
                                and shared.apply(record):
                            log.debug("merged replica state", replica=record.replica,
                                      updates=record.contribution.updates)
                        if baselines is not None and self.shared:
                            for other in self.shared.values():
                                baselines.apply(other)
                            self.shared.clear()
                        if self.labels:
                            self._apply_labels(labels)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def publish(self, producer: AIOKafkaProducer, record: ReplicaRecord) -> None:
        """Write this replica's record and wait for the broker's acknowledgement."""
        key = self.prefix + record.replica.encode()
        await producer.send_and_wait(self.topic, key=key, value=record.to_bytes(
            self.settings.name))
        log.debug("state published", updates=record.contribution.updates)

    async def publish_shared(self, producer: AIOKafkaProducer, baselines: SharedBaselines
                             ) -> int:
        """Write the per-key and exemplar records of every baseline that learnt since the
        last publish; returns the number of records written."""
        written = 0
        saved_at = utc_now()
        for baseline in baselines.changed():
            records = baselines.records(baseline)
            futures = [await producer.send(self.topic, key=r.record_key(self.settings.name),
                                           value=r.to_bytes(self.settings.name, saved_at))
                       for r in records]
            await asyncio.gather(*futures)
            baselines.mark_published(baseline, records)
            written += len(records)
        return written


    async def publish_labels(self, producer: AIOKafkaProducer, labels: SharedLabels) -> int:
        """Write the label records (and revokes' tombstones) queued since the last publish;
        returns how many. On failure they are queued again."""
        taken = labels.take()
        if not taken:
            return 0
        saved_at = utc_now()
        try:
            futures = [await producer.send(
                self.topic, key=record_key(self.settings.name, source),
                value=None if record is None else record.to_bytes(self.settings.name,
                                                                   saved_at))
                for source, record in taken]
            await asyncio.gather(*futures)
        except Exception:
            labels.requeue(taken)
            raise
        return len(taken)


class StateSync:
    """Runs the sharing for one replica: publishes its contribution on a timer and on
    demand, and follows the other replicas' records, handing newly published calibration
    artifacts to `on_calibration` (the adopter). An async context manager.

    The record carries the global baseline's threshold; after an adoption (a new base)
    the zeroed contribution is published on the new base at the next publish."""

    def __init__(self, store: StateStore, shared: SharedCentroid, producer: AIOKafkaProducer,
                 interval_s: float, *, baselines: SharedBaselines | None = None,
                 on_calibration: Callable[[bytes], object] | None = None,
                 metrics: Metrics | None = None, labels: SharedLabels | None = None) -> None:
        self.store = store
        self.labels = labels
        self.metrics = metrics
        self.shared = shared
        self.baselines = baselines
        self.producer = producer
        self.interval_s = interval_s
        self.on_calibration = on_calibration
        self._published: tuple[str, int] | None = None  # (base, own updates) last written
        self._tasks: list[asyncio.Task[None]] = []

    def _mark(self) -> tuple[str, int]:
        return self.shared.base, self.shared.own.updates

    async def publish(self) -> None:
        """Publish our contribution if it changed since the last publish (and the per-key
        and exemplar records of baselines that learnt, and the label records queued:
        before the record whose feedback positions include their labels)."""
        if self.labels is not None:
            try:
                await self.store.publish_labels(self.producer, self.labels)
            except Exception as exc:  # the positions past their labels wait for them
                log.warning("label records publish failed; will retry", error=repr(exc))
                return
        if self.baselines is not None:
            try:
                await self.store.publish_shared(self.producer, self.baselines)
            except Exception as exc:
                log.warning("state publish failed; will retry", error=repr(exc))
        if self._mark() == self._published:
            return
        threshold = self.shared.baseline.threshold
        assert threshold is not None  # the global baseline's
        record = self.shared.record(threshold)
        try:
            await self.store.publish(self.producer, record)
        except Exception as exc:
            log.warning("state publish failed; will retry", error=repr(exc))
            return
        self._published = (record.base, record.contribution.updates)

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.publish()

    async def __aenter__(self) -> StateSync:
        self._published = self._mark()
        self._tasks = [asyncio.create_task(self._every()),
                       asyncio.create_task(self.store.follow(self.shared, self.baselines,
                                                             self.on_calibration,
                                                             self.metrics, self.labels))]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.publish()
