"""Centroid snapshots in a compacted Kafka topic, keyed by the detector's name.

A snapshot holds the centroid state (S, w, version, decay), the threshold in force,
the model, and the *base* it grew from (the calibration artifact or seed file). On
start the newest snapshot for the key is loaded when its model, dimension and base
match the configuration; otherwise the detector starts from the base again (a new
calibration artifact wins over an old snapshot). Snapshots are written on a timer, when
partitions are revoked, and at shutdown.

Reading needs no consumer group: every partition of the state topic is assigned and
read from the beginning up to the end offsets captured at start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from detector.centroid import Centroid
from detector.config import Settings
from detector.kafka import connection_kwargs, ensure_topics, topic_partitions
from detector.records import utc_now

log = structlog.get_logger("detector.state")

STATE_SCHEMA = "detector.state/v1"
COMPACTED = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
             "segment.ms": "3600000"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One saved centroid state."""

    centroid: Centroid
    threshold: float
    model: str
    dimension: int
    base: str
    saved_at: str

    def to_bytes(self, name: str) -> bytes:
        return orjson.dumps({
            "schema": STATE_SCHEMA, "name": name, "centroid": self.centroid.to_dict(),
            "threshold": self.threshold, "model": {"name": self.model,
                                                   "dimension": self.dimension},
            "base": self.base, "saved_at": self.saved_at,
        })

    @classmethod
    def from_bytes(cls, raw: bytes) -> Snapshot:
        body: dict[str, Any] = orjson.loads(raw)
        if body.get("schema") != STATE_SCHEMA:
            msg = f"unknown state schema {body.get('schema')!r}"
            raise ValueError(msg)
        return cls(Centroid.from_dict(body["centroid"]), float(body["threshold"]),
                   str(body["model"]["name"]), int(body["model"]["dimension"]),
                   str(body["base"]), str(body["saved_at"]))


class StateStore:
    """Loads and saves snapshots of one detector (`settings.name`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.state.topic
        self.key = settings.name.encode()

    async def ensure_topic(self) -> None:
        await ensure_topics(self.settings.kafka, {self.topic: COMPACTED}, partitions=1)

    async def load(self) -> Snapshot | None:
        """The newest snapshot for this detector, or None when there is none."""
        partitions = await topic_partitions(self.settings.kafka, self.topic)
        if not partitions:
            return None
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer = AIOKafkaConsumer(**connection_kwargs(self.settings.kafka), group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            latest: bytes | None = None
            remaining = {tp for tp in tps if ends[tp] > 0}
            async with asyncio.timeout(60):
                while remaining:
                    fetched = await consumer.getmany(timeout_ms=500)
                    for records in fetched.values():
                        for record in records:
                            if record.key == self.key and record.value is not None:
                                latest = record.value
                    for tp in list(remaining):
                        if await consumer.position(tp) >= ends[tp]:
                            remaining.discard(tp)
        finally:
            await consumer.stop()
        if latest is None:
            return None
        try:
            return Snapshot.from_bytes(latest)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable state snapshot", error=str(exc), topic=self.topic)
            return None

    async def save(self, producer: AIOKafkaProducer, snapshot: Snapshot) -> None:
        """Write a snapshot and wait for the broker's acknowledgement."""
        await producer.send_and_wait(self.topic, key=self.key,
                                     value=snapshot.to_bytes(self.settings.name))
        log.debug("state snapshot saved", version=snapshot.centroid.version,
                  weight=snapshot.centroid.weight)


def snapshot_of(centroid: Centroid, threshold: float, model: str, dimension: int, base: str
                ) -> Snapshot:
    return Snapshot(centroid.copy(), threshold, model, dimension, base, utc_now())


def usable(snapshot: Snapshot, model: str, dimension: int, base: str) -> str | None:
    """None when the snapshot fits the configuration, else why it does not."""
    if (snapshot.model, snapshot.dimension) != (model, dimension):
        return (f"snapshot is for {snapshot.model}/{snapshot.dimension}, "
                f"configured {model}/{dimension}")
    if snapshot.base != base:
        return f"snapshot grew from {snapshot.base}, configured base is {base}"
    return None
