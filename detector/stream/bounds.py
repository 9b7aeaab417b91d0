"""Replay bounds: where a bounded replay stops in each partition. Pure, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka.structs import TopicPartition

from detector.io import records as rec

Fetched = dict[TopicPartition, list[rec.KafkaRecord]]


class Bounds:
    """The end offsets (exclusive) of a bounded replay, and which partitions reached them."""

    def __init__(self, ends: Mapping[TopicPartition, int],
                 starts: Mapping[TopicPartition, int] | None = None) -> None:
        """`starts` are the offsets the replay starts at (0 where not given)."""
        self.ends = dict(ends)
        self.starts = dict(starts or {})
        self.finished: set[TopicPartition] = set()
        self._last: dict[TopicPartition, int] = {}  # the last offset kept per partition

    @property
    def reached(self) -> bool:
        """Every partition reached its end: nothing more is to be read."""
        return len(self.finished) == len(self.ends)

    def unfinished(self, tps: Iterable[TopicPartition]) -> list[TopicPartition]:
        """The partitions of `tps` that still have records to read."""
        return [tp for tp in tps if tp not in self.finished]

    def clip(self, fetched: Fetched) -> tuple[Fetched, list[TopicPartition]]:
        """The fetched records before each partition's end, and the partitions that reached
        their end with this fetch (or before it: an empty range, or an earlier fetch that
        ended exactly at the end)."""
        kept: Fetched = {}
        reached: list[TopicPartition] = []
        for tp, end in self.ends.items():
            records = [r for r in fetched.get(tp, []) if r.offset < end]
            last = (records[-1].offset + 1) if records else None
            if tp not in self.finished and (
                    (last is not None and last >= end) or self._next(tp) >= end):
                self.finished.add(tp)
                reached.append(tp)
            if records:
                kept[tp] = records
                self._last[tp] = records[-1].offset
        return kept, reached

    def _next(self, tp: TopicPartition) -> int:
        """The offset of the next record to read, before this fetch."""
        last = self._last.get(tp)
        return last + 1 if last is not None else self.starts.get(tp, 0)
