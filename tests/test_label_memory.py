"""The label memory: near duplicates of labelled comments, bounded, replaceable, revocable."""

from __future__ import annotations

import numpy as np
import pytest

from detector.model.label_memory import LabelMemory, near_duplicate_radius, pairwise_q999


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


class TestMatching:
    def test_a_near_duplicate_matches_and_a_far_comment_does_not(self) -> None:
        memory = LabelMemory(4, 3, radius=0.95)
        memory.remember("a", "normal", unit(1, 0, 0))
        near, far = memory.match(np.stack([unit(1, 0.1, 0), unit(0, 1, 0)]))
        assert near is not None
        assert near.kind == "normal"
        assert near.ident == "a"
        assert near.similarity == pytest.approx(float(unit(1, 0.1, 0)[0]), abs=1e-6)
        assert far is None

    def test_the_nearest_label_decides(self) -> None:
        memory = LabelMemory(4, 3, radius=0.5)
        memory.remember("n", "normal", unit(1, 0, 0))
        memory.remember("x", "anomaly", unit(1, 1, 0))
        [got] = memory.match(unit(1, 0.9, 0))
        assert got is not None
        assert got.ident == "x"
        assert got.kind == "anomaly"

    def test_an_anomaly_label_wins_a_tie(self) -> None:
        memory = LabelMemory(4, 2, radius=0.5)
        memory.remember("n", "normal", unit(1, 0))
        memory.remember("x", "anomaly", unit(1, 0))
        [got] = memory.match(unit(1, 0))
        assert got is not None
        assert got.kind == "anomaly"

    def test_an_empty_memory_matches_nothing(self) -> None:
        assert LabelMemory(2, 2, 0.9).match(np.eye(2)) == [None, None]


class TestLifecycle:
    def test_a_later_label_replaces_the_earlier_one(self) -> None:
        memory = LabelMemory(4, 2, radius=0.9)
        memory.remember("a", "normal", unit(1, 0))
        memory.remember("a", "anomaly", unit(1, 0))
        assert len(memory) == 1
        [got] = memory.match(unit(1, 0))
        assert got is not None
        assert got.kind == "anomaly"

    def test_forget_revokes(self) -> None:
        memory = LabelMemory(4, 2, radius=0.9)
        memory.remember("a", "normal", unit(1, 0))
        assert memory.forget("a")
        assert not memory.forget("a")
        assert memory.match(unit(1, 0)) == [None]

    def test_the_oldest_label_is_forgotten_first(self) -> None:
        memory = LabelMemory(2, 2, radius=0.99)
        memory.remember("a", "normal", unit(1, 0))
        memory.remember("b", "normal", unit(0, 1))
        dropped = memory.remember("c", "anomaly", unit(1, 1))
        assert dropped == "a"
        assert len(memory) == 2
        assert memory.match(unit(1, 0)) == [None]
        assert [e.ident for e in memory.entries()] == ["b", "c"]

    def test_bad_vectors_are_refused(self) -> None:
        memory = LabelMemory(2, 2, radius=0.9)
        with pytest.raises(ValueError, match="dimension"):
            memory.remember("a", "normal", [1.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="non-zero"):
            memory.remember("a", "normal", [0.0, 0.0])


class TestRadius:
    def test_the_radius_is_halfway_from_the_pairwise_tail_to_one(self) -> None:
        assert near_duplicate_radius(0.8) == pytest.approx(0.9)

    def test_pairwise_tail_of_random_directions_is_low(self) -> None:
        rows = np.random.default_rng(0).normal(size=(300, 64))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        q = pairwise_q999(rows)
        assert q is not None
        assert 0.2 < q < 0.6  # about 3.3 / sqrt(64) for random directions
        assert pairwise_q999(rows[:1]) is None


class TestPacking:
    def test_forgetting_a_middle_label_keeps_every_other_one_findable(self) -> None:
        """Rows stay packed (the last moves into a freed slot) without losing its label,
        its kind or its place in the age order."""
        memory = LabelMemory(3, 3, radius=0.99)
        memory.remember("a", "normal", unit(1, 0, 0))
        memory.remember("b", "anomaly", unit(0, 1, 0))
        memory.remember("c", "anomaly", unit(0, 0, 1))
        assert memory.forget("a")
        got = memory.match(np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)]))
        assert [None if m is None else (m.ident, m.kind) for m in got] == [
            None, ("b", "anomaly"), ("c", "anomaly")]
        memory.remember("d", "normal", unit(1, 0, 0))
        assert memory.remember("e", "normal", unit(1, 1, 1)) == "b"  # b is now the oldest
        assert [e.ident for e in memory.entries()] == ["c", "d", "e"]
