"""Bounded ranges of a topic, shared by `detector calibrate --topic` and `detector replay`.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.errors import ConfigError
from detector.io.kafka import reader_consumer, topic_partitions

PROGRESS_SCHEMA = "detector.replay-progress/v1"


@dataclass
class Plan:
    """What to read: per partition [start, end) offsets; `next` is the resume point."""

    topic: str
    ranges: dict[int, tuple[int, int]]
    next: dict[int, int] = field(default_factory=dict)
    centroid: dict[str, Any] | None = None
    exemplars: list[dict[str, Any]] | None = None  # the global reservoir, evolving replays

    def position(self, partition: int) -> int:
        return self.next.get(partition, self.ranges[partition][0])

    def total(self) -> int:
        return sum(end - start for start, end in self.ranges.values())

    def remaining(self) -> int:
        return sum(max(0, end - self.position(p)) for p, (_, end) in self.ranges.items())

    def to_json(self) -> dict[str, Any]:
        return {"schema": PROGRESS_SCHEMA, "topic": self.topic,
                "ranges": {str(p): list(r) for p, r in self.ranges.items()},
                "next": {str(p): o for p, o in self.next.items()}, "centroid": self.centroid,
                "exemplars": self.exemplars}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Plan:
        if body.get("schema") != PROGRESS_SCHEMA:
            msg = "not a replay progress file"
            raise ConfigError(msg)
        return cls(body["topic"], {int(p): (int(r[0]), int(r[1]))
                                   for p, r in body["ranges"].items()},
                   {int(p): int(o) for p, o in body["next"].items()}, body.get("centroid"),
                   body.get("exemplars"))


async def resolve_plan(settings: Settings, topic: str, *, time_from: int | None = None,
                       time_to: int | None = None, starts: Mapping[int, int] | None = None,
                       ends: Mapping[int, int] | None = None,
                       partitions: Sequence[int] | None = None) -> Plan:
    """Turn timestamps (epoch ms) and explicit bounds into per-partition offset ranges.

    Explicit `starts`/`ends` only narrow the range; a time past the last record means
    the end offset.
    """
    available = await topic_partitions(settings.kafka, topic)
    if not available:
        msg = f"topic {topic!r} does not exist or has no partitions"
        raise ConfigError(msg)
    chosen = sorted(partitions if partitions is not None else available)
    unknown = set(chosen) - set(available)
    if unknown:
        msg = f"topic {topic!r} has no partitions {sorted(unknown)}"
        raise ConfigError(msg)
    consumer = reader_consumer(settings.kafka)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in chosen]
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)  # captured now: a live topic's read ends
        first = {tp.partition: begin[tp] for tp in tps}
        last = {tp.partition: end[tp] for tp in tps}
        for when, target in ((time_from, first), (time_to, last)):
            if when is None:
                continue
            found = await consumer.offsets_for_times(dict.fromkeys(tps, when))
            for tp in tps:
                hit = found.get(tp)
                target[tp.partition] = hit.offset if hit is not None else end[tp]
        first.update({p: max(o, first[p]) for p, o in (starts or {}).items() if p in first})
        last.update({p: min(o, last[p]) for p, o in (ends or {}).items() if p in last})
        return Plan(topic, {p: (first[p], max(first[p], last[p])) for p in chosen})
    finally:
        await consumer.stop()


def parse_time(text: str) -> int:
    """Epoch milliseconds from ISO 8601 (naive means UTC) or a number of milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"not an ISO 8601 time or epoch milliseconds: {text!r}"
        raise ConfigError(msg) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_bounds(items: Sequence[str]) -> dict[int, int]:
    """``["0:100", "2:7"]`` → ``{0: 100, 2: 7}``; anything else is a ConfigError."""
    out: dict[int, int] = {}
    for item in items:
        partition, sep, offset = item.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            msg = f"expected PARTITION:OFFSET, got {item!r}"
            raise ConfigError(msg)
        out[int(partition)] = int(offset)
    return out


async def read_plan(settings: Settings, plan: Plan) -> AsyncIterator[Any]:
    """Every record of the plan's ranges (aiokafka `ConsumerRecord`s), partition by
    partition, read with manual assignment and no group. The loop follows the consumer's
    position, not the last record's offset + 1, so transaction markers and compacted gaps
    before a range's end cannot stall it."""
    consumer = reader_consumer(settings.kafka)
    await consumer.start()
    try:
        for partition, (start, end) in plan.ranges.items():
            if start >= end:
                continue
            tp = TopicPartition(plan.topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                fetched = await consumer.getmany(tp, timeout_ms=1000)
                for record in fetched.get(tp, []):
                    if record.offset < end:
                        yield record
    finally:
        await consumer.stop()
