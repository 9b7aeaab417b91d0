"""Offset bookkeeping: commits never pass a record that is still in flight."""

from __future__ import annotations

import pytest
from aiokafka.structs import TopicPartition

from detector.stream.offsets import OffsetTracker

TP = TopicPartition("comments", 0)


class TestOffsetTracker:
    def test_nothing_to_commit_until_the_first_record_is_done(self) -> None:
        """a fetched but unfinished record blocks the commit."""
        t = OffsetTracker()
        t.add(TP, 5)
        assert t.to_commit() == {}

    def test_commit_stops_at_the_first_unfinished_record(self) -> None:
        """records done out of order only count once the gap before them closes."""
        t = OffsetTracker()
        gens = [t.add(TP, o) for o in (10, 11, 12)]
        t.done(TP, 12, gens[2])
        assert t.to_commit() == {}
        t.done(TP, 10, gens[0])
        assert t.to_commit() == {TP: 11}
        t.done(TP, 11, gens[1])
        assert t.to_commit() == {TP: 13}
        assert t.in_flight(TP) == 0

    def test_committed_offsets_are_not_offered_again(self) -> None:
        """mark_committed removes an offset from the next to_commit."""
        t = OffsetTracker()
        t.done(TP, 0, t.add(TP, 0))
        t.mark_committed(t.to_commit())
        assert t.to_commit() == {}

    def test_offsets_must_increase(self) -> None:
        """a partition's offsets arriving out of order is a programming error."""
        t = OffsetTracker()
        t.add(TP, 3)
        with pytest.raises(ValueError, match="arrived after"):
            t.add(TP, 3)

    def test_completions_from_before_a_revocation_are_ignored(self) -> None:
        """after forget + re-add, a stale completion cannot mark the new ledger done."""
        t = OffsetTracker()
        stale = t.add(TP, 7)
        t.forget([TP])
        fresh = t.add(TP, 7)
        t.done(TP, 7, stale)
        assert t.to_commit() == {}
        t.done(TP, 7, fresh)
        assert t.to_commit() == {TP: 8}

    def test_partitions_are_independent(self) -> None:
        """a stuck partition does not hold back another."""
        t = OffsetTracker()
        stuck, free = TopicPartition("a", 0), TopicPartition("a", 1)
        t.add(stuck, 0)
        t.done(free, 0, t.add(free, 0))
        assert t.to_commit() == {free: 1}
        assert t.in_flight() == 1
