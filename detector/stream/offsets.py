"""Offset bookkeeping: which offset is safe to commit per partition. Pure, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition


@dataclass(slots=True)
class _PartitionLedger:
    generation: int
    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the last record known done in order


class OffsetTracker:
    """Tracks in-flight offsets per partition and yields what can be committed."""

    def __init__(self) -> None:
        self._ledgers: dict[TopicPartition, _PartitionLedger] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._generations = 0

    def add(self, tp: TopicPartition, offset: int) -> int:
        """Register a fetched record and return the ledger generation to pass to `done`.

        Offsets of a partition must arrive increasing. A partition that was forgotten
        (revoked) and assigned again gets a new generation, so completions of records
        fetched before the revocation cannot mark the new ledger's records done.
        """
        ledger = self._ledgers.get(tp)
        if ledger is None:
            self._generations += 1
            ledger = self._ledgers[tp] = _PartitionLedger(self._generations)
        if ledger.pending and offset <= ledger.pending[-1]:
            msg = f"offset {offset} of {tp} arrived after {ledger.pending[-1]}"
            raise ValueError(msg)
        ledger.pending.append(offset)
        return ledger.generation

    def done(self, tp: TopicPartition, offset: int, generation: int) -> None:
        """Mark a record finished; advances the committable offset over the done prefix."""
        ledger = self._ledgers.get(tp)
        if ledger is None or ledger.generation != generation:
            return  # revoked (and maybe re-assigned) since: not ours to commit any more
        ledger.done.add(offset)
        while ledger.pending and ledger.pending[0] in ledger.done:
            first = ledger.pending.popleft()
            ledger.done.discard(first)
            ledger.next_offset = first + 1

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        """Records fetched and not yet done (for one partition, or all)."""
        if tp is not None:
            ledger = self._ledgers.get(tp)
            return len(ledger.pending) if ledger else 0
        return sum(len(ledger.pending) for ledger in self._ledgers.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets that advanced since the last `mark_committed`."""
        return {
            tp: ledger.next_offset
            for tp, ledger in self._ledgers.items()
            if ledger.next_offset is not None and self._committed.get(tp) != ledger.next_offset
        }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, tps: list[TopicPartition]) -> None:
        """Drop partitions that were revoked; late completions for them are ignored."""
        for tp in tps:
            self._ledgers.pop(tp, None)
            self._committed.pop(tp, None)
