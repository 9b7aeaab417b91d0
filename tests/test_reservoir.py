"""The exemplar reservoir: bounded, deterministic, mergeable, kNN and nearest exemplars."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detector.model.reservoir import (
    Ref,
    Reservoir,
    decode_exemplars,
    encode_exemplars,
    priority,
)


def rows(n: int, d: int = 16, seed: int = 0) -> npt.NDArray[np.float64]:
    x = np.random.default_rng(seed).normal(size=(n, d))
    out: npt.NDArray[np.float64] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def refs(n: int, partition: int = 0) -> list[Ref]:
    return [Ref("comments", partition, i, f"id-{i}") for i in range(n)]


class TestReservoir:
    def test_keeps_at_most_capacity_highest_priorities(self) -> None:
        """After many offers the reservoir holds exactly the top-capacity priorities."""
        r = Reservoir(10, 16)
        items = list(zip(rows(200), refs(200), strict=True))
        for v, ref in items:
            r.offer(v, ref)
        assert len(r) == 10
        best = sorted(items, key=lambda item: priority(item[1]), reverse=True)[:10]
        assert {e.ref for e in r.exemplars()} == {ref for _, ref in best}

    def test_order_of_offers_does_not_matter(self) -> None:
        """Two replays in different orders keep the same sample (hash priorities)."""
        items = list(zip(rows(100), refs(100), strict=True))
        a, b = Reservoir(12, 16), Reservoir(12, 16)
        for v, ref in items:
            a.offer(v, ref)
        for v, ref in reversed(items):
            b.offer(v, ref)
        assert {e.ref for e in a.exemplars()} == {e.ref for e in b.exemplars()}

    def test_merge_of_replicas_equals_reservoir_of_union(self) -> None:
        """Merging two replicas' reservoirs gives the reservoir of all their offers."""
        items = list(zip(rows(120), refs(120), strict=True))
        one, two, union = Reservoir(8, 16), Reservoir(8, 16), Reservoir(8, 16)
        for i, (v, ref) in enumerate(items):
            (one if i % 2 else two).offer(v, ref, origin="a" if i % 2 else "b")
            union.offer(v, ref)
        one.merge(two.exemplars())
        assert {e.ref for e in one.exemplars()} == {e.ref for e in union.exemplars()}
        assert one.merge(two.exemplars()) == 0  # idempotent

    def test_same_record_offered_twice_is_kept_once(self) -> None:
        """A redelivered record (same topic, partition, offset) is not duplicated."""
        r = Reservoir(5, 16)
        v = rows(1)[0]
        assert r.offer(v, Ref("t", 0, 7)) is True
        assert r.offer(v, Ref("t", 0, 7)) is False
        assert len(r) == 1

    def test_weight_favours_heavier_items(self) -> None:
        """Items offered with a higher weight are kept more often."""
        r = Reservoir(50, 16)
        for i, v in enumerate(rows(1000)):
            r.offer(v, Ref("t", 0, i), weight=10.0 if i % 2 else 1.0)
        heavy = sum(e.ref.offset % 2 for e in r.exemplars())
        assert heavy > 40

    def test_knn_is_mean_cosine_to_k_nearest(self) -> None:
        """knn returns the mean of the k largest cosines to the exemplars."""
        r = Reservoir(100, 16)
        data = rows(30)
        for v, ref in zip(data, refs(30), strict=True):
            r.offer(v, ref)
        q = rows(3, seed=5)
        expected = np.sort(q @ data.T, axis=1)[:, -5:].mean(axis=1)
        np.testing.assert_allclose(r.knn(q, 5), expected, atol=1e-5)

    def test_knn_of_empty_reservoir_is_nan(self) -> None:
        """An empty reservoir cannot score: NaN, so callers fall back explicitly."""
        assert np.isnan(Reservoir(4, 16).knn(rows(1), 5)).all()

    def test_nearest_gives_references_most_similar_first(self) -> None:
        """nearest returns the closest exemplars with their similarity and source."""
        r = Reservoir(100, 16)
        data = rows(20)
        for v, ref in zip(data, refs(20), strict=True):
            r.offer(v, ref)
        near = r.nearest(data[7], 3)
        assert near[0].ref.offset == 7
        assert near[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert [n.similarity for n in near] == sorted((n.similarity for n in near), reverse=True)

    def test_nearest_breaks_ties_like_a_full_stable_sort(self) -> None:
        """equally similar exemplars at the cut come in storage order, as a full stable
        sort of every similarity would give them (explanations are reproducible)."""
        r = Reservoir(100, 16)
        data = rows(6)
        twins = [data[0], data[1], data[1], data[1], data[2], data[1]]  # four ties
        for v, ref in zip(twins, refs(6), strict=True):
            r.offer(v, ref)
        assert [n.ref.offset for n in r.nearest(data[1], 3)] == [1, 2, 3]

    def test_serialised_round_trip_keeps_refs_and_cosines(self) -> None:
        """int8 encoding keeps cosines within 0.01, references, priorities and origins;
        text only when asked."""
        r = Reservoir(10, 16)
        for i, v in enumerate(rows(10)):
            r.offer(v, Ref("t", 1, i, str(i), text=f"text {i}"), origin="r1")
        body = encode_exemplars(r.exemplars(), keep_text=False)
        back = decode_exemplars(body, 16)
        assert [e.ref.position for e in back] == [e.ref.position for e in r.exemplars()]
        assert all(e.ref.text is None and e.origin == "r1" for e in back)
        for a, b in zip(back, r.exemplars(), strict=True):
            assert float(a.vector @ b.vector) > 0.99
        assert decode_exemplars(encode_exemplars(r.exemplars(), keep_text=True), 16)[0].ref.text

    def test_capacity_must_be_positive(self) -> None:
        """A zero-capacity reservoir is a configuration error."""
        with pytest.raises(ValueError, match="capacity"):
            Reservoir(0, 4)
