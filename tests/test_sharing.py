"""Per-key baselines and reservoirs across replicas: records, merging, restoring."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from detector.model.baselines import Baseline, Baselines, Policy
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref, Reservoir
from detector.state.sharing import ExemplarChunk, KeyRecord, Scope, SharedBaselines, parse

D = 8


def rows(n: int, seed: int, axis: int = 0) -> npt.NDArray[np.float64]:
    x = np.random.default_rng(seed).normal(scale=0.1, size=(n, D))
    x[:, axis] += 1.0
    out: npt.NDArray[np.float64] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def replica(name: str, base: str = "base-1") -> SharedBaselines:
    g = Baseline(None, Centroid.from_vectors(rows(5, 0)), Reservoir(20, D), 0.0, 5)
    b = Baselines(g, Policy(key_min_samples=1, key_reservoir_size=10),
                  replica=name)
    return SharedBaselines(b, Scope(name, base, "m", D))


def learn(shared: SharedBaselines, data: npt.NDArray[np.float64], key: str, start: int,
          partition: int) -> None:
    for i, row in enumerate(data):
        shared.baselines.judge(row, key, Ref("comments", partition, start + i))


def exchange(src: SharedBaselines, dst: SharedBaselines) -> None:
    for baseline in src.changed():
        records = src.records(baseline)
        for record in records:
            parsed = parse(record.to_bytes("det", "now"))
            assert parsed is not None
            dst.apply(parsed)
        src.mark_published(baseline, records)


class TestSharedBaselines:
    def test_replicas_agree_on_key_centroids_and_reservoirs(self) -> None:
        """Two replicas learning different comments of the same key converge."""
        a, b = replica("a"), replica("b")
        learn(a, rows(30, 1, axis=2), "shop", 0, 0)
        learn(b, rows(30, 2, axis=2), "shop", 0, 1)
        exchange(a, b)
        exchange(b, a)
        ka, kb = a.baselines.keys["shop"], b.baselines.keys["shop"]
        np.testing.assert_allclose(ka.centroid.sum, kb.centroid.sum, rtol=1e-9)
        assert ka.centroid.version == kb.centroid.version == 60
        for x, y in ((ka, kb), (a.baselines.global_, b.baselines.global_)):
            assert {e.ref.position for e in x.reservoir.exemplars()} == \
                {e.ref.position for e in y.reservoir.exemplars()}

    def test_records_applied_twice_change_nothing(self) -> None:
        """A repeated key record or exemplar chunk is applied once."""
        a, b = replica("a"), replica("b")
        learn(a, rows(10, 1, axis=2), "shop", 0, 0)
        records = a.records(a.baselines.keys["shop"])
        assert any(isinstance(r, KeyRecord) for r in records)
        assert all(b.apply(r) for r in records)
        assert not any(b.apply(r) for r in records)
        assert b.baselines.keys["shop"].centroid.version == 10

    def test_restore_continues_own_contribution(self) -> None:
        """At start a replica's own records restore its key baselines and exemplars."""
        before = replica("a")
        learn(before, rows(12, 1, axis=2), "shop", 0, 0)
        records = [r for b in before.changed() for r in before.records(b)]
        after = replica("a")
        for record in records:
            assert after.apply(record, own=True)
        k0, k1 = before.baselines.keys["shop"], after.baselines.keys["shop"]
        np.testing.assert_allclose(k1.centroid.sum, k0.centroid.sum, rtol=1e-9)
        assert k1.own.updates == 12
        assert len(k1.reservoir) == len(k0.reservoir) == 10
        assert after.changed() == []  # nothing new to publish

    def test_other_base_or_model_is_ignored(self) -> None:
        """Records made on another calibration base are not merged."""
        a, foreign = replica("a"), replica("x", base="base-2")
        learn(foreign, rows(5, 1, axis=2), "shop", 0, 0)
        assert not any(a.apply(r) for r in foreign.records(foreign.baselines.keys["shop"]))
        assert "shop" not in a.baselines.keys

    def test_chunks_no_longer_needed_are_emptied(self) -> None:
        """When a replica holds fewer own exemplars, its extra chunks are rewritten empty."""
        a = replica("a")
        learn(a, rows(5, 1), "shop", 0, 0)
        a.chunks[None] = 3
        chunks = [r for r in a.records(a.baselines.global_) if isinstance(r, ExemplarChunk)]
        assert [len(c.exemplars) > 0 for c in chunks] == [True, False, False]

    def test_unchanged_reservoir_is_not_sent_again(self) -> None:
        """Exemplar chunks are written only when the reservoir kept something new since
        the last publish; a key's contribution is written whenever it learnt."""
        a = replica("a")
        learn(a, rows(5, 1, axis=2), "shop", 0, 0)
        key = a.baselines.keys["shop"]
        first = a.records(key)
        a.mark_published(key, first)
        assert any(isinstance(r, ExemplarChunk) for r in first)
        key.own.updates += 1  # learnt, but the reservoir kept nothing new
        again = a.records(key)
        assert [type(r) for r in again] == [KeyRecord]
