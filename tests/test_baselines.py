"""Per-key baselines: global fallback, key thresholds, LRU eviction, kNN, explanations."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detector.model.baselines import Baseline, Baselines, Judgement, KeyBase, Policy
from detector.model.centroid import Centroid
from detector.model.reference import Sample
from detector.model.reservoir import Ref, Reservoir

D = 8


def unit(*values: float) -> npt.NDArray[np.float64]:
    v = np.zeros(D)
    v[: len(values)] = values
    out: npt.NDArray[np.float64] = v / np.linalg.norm(v)
    return out


def near(axis: int, seed: int, spread: float = 0.1) -> npt.NDArray[np.float64]:
    v = np.random.default_rng(seed).normal(scale=spread, size=D)
    v[axis] += 1.0
    out: npt.NDArray[np.float64] = v / np.linalg.norm(v)
    return out


def global_baseline(threshold: float = 0.5) -> Baseline:
    return Baseline(None, Centroid.from_vectors([unit(1)]), Reservoir(50, D), threshold, 1)


def ref(i: int) -> Ref:
    return Ref("comments", 0, i, f"c{i}")


def judge_all(baselines: Baselines, rows: npt.ArrayLike, start: int = 0) -> list[Judgement]:
    """Judge rows in order, as the global baseline's comments at offsets from `start`."""
    return [baselines.judge(row, None, ref(start + i))
            for i, row in enumerate(np.asarray(rows, dtype=np.float64))]


class TestGating:
    def test_only_confident_rows_update(self) -> None:
        """rows below the gate (without reference normals: the threshold) are scored but
        do not move the centroid."""
        c = Centroid.from_vectors([unit(1)])
        b = Baselines(Baseline(None, c, Reservoir(50, D), 0.5), Policy())
        verdicts = judge_all(b, [unit(1, 0.1), unit(0, 1)])
        assert [v.accepted for v in verdicts] == [True, False]
        assert c.weight == 2.0
        assert c.version == 1
        assert c.vector[1] > 0  # moved toward the accepted row only

    def test_update_disabled_keeps_centroid_frozen(self) -> None:
        """update=False scores without changing state."""
        c = Centroid.from_vectors([unit(1)])
        b = Baselines(Baseline(None, c, Reservoir(50, D), 0.0),
                      Policy(update=False))
        (v,) = judge_all(b, [unit(1)])
        assert not v.accepted
        assert (c.weight, c.version) == (1.0, 0)

    def test_scoring_is_sequential_so_batching_does_not_matter(self) -> None:
        """judging rows one after another updates the centroid before the next row, so
        the scores equal those of a copy that judges them in other runs."""
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(30, D)) + 2.0
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        seed = Centroid.from_vectors(rows[:3])
        a = Baselines(Baseline(None, seed.copy(), Reservoir(50, D), 0.5), Policy())
        b = Baselines(Baseline(None, seed.copy(), Reservoir(50, D), 0.5), Policy())
        together = [v.score for v in judge_all(a, rows)]
        in_runs = [v.score for start, end in ((0, 1), (1, 13), (13, 30))
                   for v in judge_all(b, rows[start:end], start)]
        assert together == in_runs
        assert a.global_.centroid.version > 0
        np.testing.assert_array_equal(a.global_.centroid.sum, b.global_.centroid.sum)


class TestBaselines:
    def test_unknown_key_is_judged_globally_and_feeds_both(self) -> None:
        """A young key uses the global baseline; an accepted comment updates both."""
        b = Baselines(global_baseline(), Policy(key_min_samples=3))
        v = b.judge(near(0, 1), "shop", ref(1))
        assert v.judged_by == "global"
        assert v.accepted
        assert b.keys["shop"].samples == 1
        assert b.global_.centroid.version == 1

    def test_key_with_enough_samples_gets_its_own_baseline(self) -> None:
        """Once a key has key_min_samples accepted comments it is judged on its own."""
        b = Baselines(global_baseline(0.3), Policy(key_min_samples=3))
        for i in range(3):
            b.judge(near(0, i), "shop", ref(i))
        assert b.judge(near(0, 9), "shop", ref(9)).judged_by == "key"
        assert b.judge(near(0, 9), None, ref(10)).judged_by == "global"

    def test_minority_key_from_artifact_is_not_alerted_where_global_would(self) -> None:
        """A key calibrated on its own population accepts what the global baseline alerts."""
        drug = Centroid.from_vectors([near(3, i) for i in range(20)])
        base = KeyBase(drug, 0.8, 20)
        b = Baselines(global_baseline(0.5), Policy(key_min_samples=10), bases={"drug": base})
        comment = near(3, 99)
        assert b.judge(comment, None, ref(1)).anomaly  # global: off the main population
        keyed = b.judge(comment, "drug", ref(2))
        assert keyed.judged_by == "key"
        assert not keyed.anomaly
        assert keyed.threshold == 0.8

    def test_key_without_own_threshold_uses_the_pooled_key_threshold(self) -> None:
        """Fallback order: own threshold, the artifact's pooled key threshold, global."""
        base = KeyBase(Centroid.from_vectors([unit(0, 1)]), None, 100)
        b = Baselines(global_baseline(0.5), Policy(key_min_samples=10), key_threshold=0.7,
                      bases={"k": base})
        assert b.judge(unit(0, 1), "k", ref(1)).threshold == 0.7
        b.key_threshold = None
        assert b.judge(unit(0, 1), "k", ref(2)).threshold == 0.5

    def test_least_recently_seen_key_is_evicted_and_counted(self) -> None:
        """max_keys bounds the keys; the least recently seen one goes first."""
        b = Baselines(global_baseline(), Policy(max_keys=2))
        evicted: list[str | None] = []
        b.when_evicted(lambda baseline: evicted.append(baseline.key))
        b.judge(unit(1), "a", ref(1))
        b.judge(unit(1), "b", ref(2))
        b.judge(unit(1), "a", ref(3))
        b.judge(unit(1), "c", ref(4))
        assert list(b.keys) == ["a", "c"]
        assert evicted == ["b"]
        assert b.evictions == 1

    def test_anomalies_do_not_learn(self) -> None:
        """A comment below the gate changes no centroid and no reservoir."""
        b = Baselines(global_baseline(0.5), Policy())
        v = b.judge(unit(0, 1), "k", ref(1))
        assert v.anomaly
        assert not v.accepted
        assert b.global_.centroid.version == 0
        assert len(b.global_.reservoir) == 0

    def test_alert_carries_three_nearest_exemplars(self) -> None:
        """An anomaly is explained by its nearest accepted exemplars, most similar first."""
        b = Baselines(global_baseline(0.5), Policy())
        for i in range(10):
            b.judge(near(0, i), None, ref(i))
        v = b.judge(unit(1, 2.0), None, ref(50))
        assert v.anomaly
        assert len(v.nearest) == 3
        assert all(n.ref.offset < 10 for n in v.nearest)
        sims = [n.similarity for n in v.nearest]
        assert sims == sorted(sims, reverse=True)

    def test_knn_method_scores_by_nearest_exemplars(self) -> None:
        """With method knn a comment close to some exemplars passes even when it is far
        from the centroid of two populations."""
        g = Baseline(None, Centroid.from_vectors([unit(1), unit(0, 1)]), Reservoir(50, D), 0.8)
        for i, v in enumerate([near(0, s, 0.01) for s in range(5)]
                              + [near(1, s, 0.01) for s in range(5)]):
            g.reservoir.offer(v, ref(i))
        knn = Baselines(g, Policy(method="knn", k=3))
        verdict = knn.judge(near(0, 77, 0.01), None, ref(99))
        assert not verdict.anomaly
        assert verdict.score > 0.95
        assert verdict.similarity < 0.8  # the centroid alone would have alerted

    def test_text_is_kept_only_when_asked(self) -> None:
        """keep_text False strips the text from the exemplar references."""
        with_text = Ref("comments", 0, 1, "c1", "hello")
        for keep in (False, True):
            b = Baselines(global_baseline(0.5), Policy(keep_text=keep))
            b.judge(unit(1), None, with_text)
            assert (b.global_.reservoir.exemplars()[0].ref.text == "hello") is keep

    def test_keys_from_other_replicas_are_evicted_before_keys_in_use(self) -> None:
        """A key created for another replica's state goes first when room is needed."""
        b = Baselines(global_baseline(), Policy(max_keys=2))
        b.judge(unit(1), "mine", ref(1))
        b.key("theirs", seen=False)
        b.judge(unit(1), "new", ref(2))
        assert list(b.keys) == ["mine", "new"]


def compressed_population(rng: np.random.Generator, n: int, dim: int = 64,
                          minority: float = 0.2, degrees: float = 5.0
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows on an e5-like compressed scale (ordinary comments at cosine 0.88-0.97 to
    their mean), two populations: a majority and a minority `degrees` apart. Returns the
    rows and which population each belongs to."""
    base = np.zeros(dim)
    base[0] = 1.0
    other = np.zeros(dim)
    other[0], other[1] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    which = rng.random(n) < minority
    centres = np.where(which[:, None], other[None, :], base[None, :])
    rows = centres * 3.2 + rng.normal(size=(n, dim)) * 0.15
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows, which


class TestReferenceThreshold:
    """Thresholds derived from reference normals follow the centroid (issue 22)."""

    def baselines(self, seed: int = 0, *, admit_quantile: float = 0.05,
                  update: bool = True) -> tuple[Baselines, np.random.Generator]:
        rng = np.random.default_rng(seed)
        train, _ = compressed_population(rng, 1000)
        held, _ = compressed_population(rng, 2000)
        centroid = Centroid.from_vectors(train)
        sample = Sample(held.astype(np.float32))
        baseline = Baseline(None, centroid, Reservoir(50, 64), None, 1000, sample)
        policy = Policy(target_fpr=0.01, admit_quantile=admit_quantile, update=update,
                        explain=0)
        return Baselines(baseline, policy), rng

    def test_the_threshold_is_derived_from_the_reference(self) -> None:
        b, _ = self.baselines()
        threshold, source = b.threshold_of(b.global_)
        assert source == "global"
        derived = b.global_.derived
        assert derived is not None
        assert derived.rank == 20  # 2,000 reference rows, 1 %, confidence 0.5
        assert 0.005 < derived.expected_fpr < 0.015
        assert derived.gate > threshold

    def test_the_calibrated_threshold_holds_until_the_baseline_learns(self) -> None:
        """At its base (version 0) the calibrated threshold is used as it is; once the
        centroid has learnt, the reference-derived one takes over."""
        rng = np.random.default_rng(6)
        train, _ = compressed_population(rng, 1000)
        held, _ = compressed_population(rng, 2000)
        baseline = Baseline(None, Centroid.from_vectors(train), Reservoir(50, 64), 0.9123,
                            1000, Sample(held.astype(np.float32)))
        b = Baselines(baseline, Policy(explain=0))
        assert b.threshold_of(b.global_)[0] == 0.9123
        judge_all(b, compressed_population(rng, 200)[0])
        assert b.threshold_of(b.global_)[0] != 0.9123
        assert b.global_.derived is not None

    def test_a_stationary_compressed_stream_keeps_its_alert_rate_and_admits_most(
            self) -> None:
        """The runaway of an absolute margin on a compressed scale does not happen: over
        20,000 stationary comments every 2,000-comment window alerts within [0.5, 1.5] x
        target in each population, the gate admits about 1 - admit_quantile of them, and
        the threshold stays put."""
        b, rng = self.baselines(seed=1)
        start = b.threshold_of(b.global_)[0]
        rows, minority = compressed_population(rng, 20_000)
        judged = judge_all(b, rows)
        alerts = np.array([j.anomaly for j in judged])
        accepted = np.array([j.accepted for j in judged])
        for lo in range(0, 20_000, 2_000):
            window = slice(lo, lo + 2_000)
            assert 0.004 <= alerts[window].mean() <= 0.016, (lo, alerts[window].mean())
        for population in (minority, ~minority):
            rate = alerts[population].mean()
            assert 0.005 <= rate <= 0.015, rate
            assert accepted[population].mean() >= 0.9  # no population starves
            first, last = (alerts[population][part].mean()
                           for part in (slice(0, 2_000), slice(-2_000, None)))
            assert last <= 1.5 * first + 0.002, (first, last)
        assert accepted.mean() >= 0.9
        assert abs(b.threshold_of(b.global_)[0] - start) < 0.01

    def test_the_threshold_follows_a_moved_centroid(self) -> None:
        """After the centroid is pulled towards the minority (a large merge, as another
        replica's contribution would be), the re-derived threshold keeps the false-positive
        rate on fresh normals near the target, where the old threshold would not."""
        b, rng = self.baselines(seed=2)
        old = b.threshold_of(b.global_)[0]
        pull = np.zeros(64)
        pull[0], pull[1] = np.cos(np.radians(25)), np.sin(np.radians(25))
        b.global_.centroid.merge(pull * 3000.0, 3000.0, 3000)
        new = b.threshold_of(b.global_)[0]
        fresh, _ = compressed_population(rng, 20_000)
        sims = fresh @ b.global_.centroid.vector
        assert 0.005 <= float(np.mean(sims < new)) <= 0.015
        assert float(np.mean(sims < old)) > 0.03  # the stale threshold breaks the promise
        assert new != old

    def test_a_key_without_support_uses_the_pooled_threshold(self) -> None:
        rng = np.random.default_rng(3)
        rows, _ = compressed_population(rng, 300)
        small = Sample(rows[:200].astype(np.float32))  # 200 cannot support 1 % at 0.9
        base = KeyBase(Centroid.from_vectors(rows[200:]), None, 100, reference=small)
        b = Baselines(global_baseline(0.3), Policy(key_min_samples=1), key_threshold=0.42,
                      bases={"k": base})
        assert b.threshold_of(b.key("k")) == (0.42, "pooled")

    def test_seed_rows_inside_the_centroid_are_scored_leave_one_out(self) -> None:
        rng = np.random.default_rng(4)
        rows, _ = compressed_population(rng, 400)
        centroid = Centroid.from_vectors(rows)
        b = Baselines(Baseline(None, centroid, Reservoir(10, 64), 0.0, 400,
                               Sample(rows.astype(np.float32), in_centroid=True)), Policy())
        scores = b.reference_scores(b.global_, b.global_.reference)  # type: ignore[arg-type]
        assert scores is not None
        rest = rows[1:].sum(axis=0)
        assert scores[0] == pytest.approx(rows[0] @ rest / np.linalg.norm(rest))
        assert float(np.mean(scores)) < float(np.mean(rows @ centroid.vector))
