"""Per-key calibration: own thresholds with enough held-out data, pooled otherwise."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detector.calibration.keys import calibrate_keys, fit
from detector.calibration.stats import fpr
from detector.model.reference import decode_rows, fpr_interval, rank, supports
from detector.model.reservoir import Ref

D = 16
BIG = 1000  # held-out normals of the big key: enough for its own threshold at 0.9


def cloud(n: int, axis: int, seed: int, spread: float) -> npt.NDArray[np.float64]:
    x = np.random.default_rng(seed).normal(scale=spread, size=(n, D))
    x[:, axis] += 1.0
    out: npt.NDArray[np.float64] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def data() -> tuple[npt.NDArray[np.float64], list[str], npt.NDArray[np.float64], list[str]]:
    train = np.concatenate([cloud(400, 0, 1, 0.2), cloud(60, 1, 2, 0.05), cloud(10, 2, 3, 0.1)])
    tkeys = ["big"] * 400 + ["small"] * 60 + ["tiny"] * 10
    hold = np.concatenate([cloud(BIG, 0, 4, 0.2), cloud(40, 1, 5, 0.05)])
    hkeys = ["big"] * BIG + ["small"] * 40
    return train, tkeys, hold, hkeys


class TestCalibrateKeys:
    @pytest.mark.parametrize("method", ["centroid", "knn"])
    def test_own_threshold_only_with_enough_holdout(self, method: str) -> None:
        """A key whose held-out normals support a threshold at the key confidence gets
        its own; a smaller one is left to the pooled threshold; too few training normals
        give no baseline at all."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                            method=method, min_train=50)  # type: ignore[arg-type]
        assert set(kc.baselines) == {"big", "small"}
        assert kc.thresholds["big"] is not None
        assert kc.thresholds["small"] is None
        assert kc.threshold("small") == kc.pooled
        big = kc.baselines["big"].scores(hold[:BIG], method, 5)  # type: ignore[arg-type]
        assert fpr(big, kc.thresholds["big"]) <= 0.01

    def test_key_baselines_separate_populations(self) -> None:
        """Each key's centroid points at its own population, not at the mix."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01, min_train=50)
        glob = fit(train, refs, 100)
        small = hold[BIG:]
        assert kc.baselines["small"].scores(small, "centroid", 5).mean() > 0.95
        assert glob.scores(small, "centroid", 5).mean() < 0.6

    def test_artifact_section_round_trips_through_json(self) -> None:
        """to_json carries centroids, thresholds, counts and exemplars per key."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01, min_train=50,
                            reservoir_size=20)
        body = kc.to_json("shop", 50, keep_text=False)
        assert body["field"] == "shop"
        assert body["baselines"]["small"]["counts"] == {"train": 60, "holdout": 40}
        assert len(body["baselines"]["big"]["exemplars"]) == 20


class TestKeyThresholdConfidence:
    def test_own_threshold_only_where_the_holdout_supports_it(self) -> None:
        """A key gets its own threshold exactly when `supports(n, target, confidence)`:
        the held-out score at `rank(n, target, confidence)`, with its promise (rank,
        count, expected FPR k/(n+1), 90 % interval) in the artifact; the others take the
        pooled threshold, chosen at the same confidence on all keys' held-out normals."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                            min_train=50, confidence=0.9)
        assert supports(BIG, 0.01, 0.9)
        assert not supports(40, 0.01, 0.9)
        k = rank(BIG, 0.01, 0.9)
        assert k is not None
        big = np.sort(kc.baselines["big"].scores(hold[:BIG], "centroid", 5))
        assert kc.thresholds["big"] == float(big[k - 1])
        assert kc.origin("big") == "own"
        assert kc.origin("small") == "pooled"
        pooled = np.sort(np.concatenate(
            [big, kc.baselines["small"].scores(hold[BIG:], "centroid", 5)]))
        k_pooled = rank(len(pooled), 0.01, 0.9)
        assert k_pooled is not None
        assert kc.pooled == float(pooled[k_pooled - 1])

        body = kc.to_json("shop", 50, keep_text=False)
        own = body["baselines"]["big"]
        assert own["threshold_origin"] == "own"
        low, high = fpr_interval(BIG, k)
        assert own["threshold_fpr"] == {"rank": k, "holdout": BIG, "confidence": 0.9,
                                        "expected_fpr": k / (BIG + 1),
                                        "fpr_interval": [low, high]}
        assert low < k / (BIG + 1) < high
        small = body["baselines"]["small"]
        assert small["threshold"] is None
        assert small["threshold_origin"] == "pooled"
        assert small["threshold_fpr"] == body["pooled_fpr"]
        assert body["pooled_fpr"]["holdout"] == len(pooled)

    def test_a_lower_confidence_gives_the_point_estimate(self) -> None:
        """At confidence 0.5 the same key's threshold is higher (alerts more): the
        conservative end is a lower rank of the same held-out scores."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        sure = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                              min_train=50, confidence=0.9)
        point = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                               min_train=50, confidence=0.5)
        assert sure.promises["big"]["rank"] < point.promises["big"]["rank"]
        assert sure.thresholds["big"] is not None
        assert point.thresholds["big"] is not None
        assert sure.thresholds["big"] < point.thresholds["big"]

    def test_no_pooled_threshold_leaves_keys_to_the_global_one(self) -> None:
        """When even the pooled held-out normals cannot promise the target, no pooled
        threshold is set and the key's origin says the global threshold applies."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold[BIG:], hkeys[BIG:], target_fpr=0.01,
                            min_train=50)
        assert kc.pooled is None
        body = kc.to_json("shop", 50, keep_text=False)
        assert body["baselines"]["small"]["threshold_origin"] == "global"
        assert "threshold_fpr" not in body["baselines"]["small"]
        assert "pooled_fpr" not in body

    def test_each_key_keeps_its_own_held_out_rows_as_reference(self) -> None:
        """A key's reference is at most `reference_size` of its own held-out normals
        (float16, unit), a random subset fixed by the seed; a key without held-out
        normals has none."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                            min_train=50, reference_size=100, seed=3)
        again = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                               min_train=50, reference_size=100, seed=3)
        assert kc.references == again.references
        assert kc.references["big"]["count"] == 100
        assert kc.references["small"]["count"] == 40  # fewer than the limit: all of them
        rows = decode_rows(kc.references["small"]["rows"], D)
        np.testing.assert_allclose(rows, hold[BIG:], atol=2e-3)
        big = decode_rows(kc.references["big"]["rows"], D)
        nearest = np.max(big @ hold[:BIG].T, axis=1)
        assert np.all(nearest > 0.999)  # every row is one of the key's held-out normals
        body = kc.to_json("shop", 50, keep_text=False)
        assert body["baselines"]["big"]["reference"] == kc.references["big"]


class TestConservativeKeyThresholdsKeepThePromise:
    def test_fpr_on_fresh_draws_within_one_and_a_half_targets(self) -> None:
        """Simulated: a key calibrated on 1,000 held-out normals at the default key
        confidence 0.9; the FPR its threshold gives on 20,000 fresh normals of the same
        population stays within 1.5 x target in at least 90 % of 200 repetitions (the
        point estimate at 0.5 is shown to do worse, which is why keys use 0.9)."""
        target, reps, fresh_n = 0.01, 200, 20_000
        within: dict[float, int] = {0.9: 0, 0.5: 0}
        for rep in range(reps):
            train = cloud(200, 0, 10_000 + rep, 0.3)
            hold = cloud(1_000, 0, 20_000 + rep, 0.3)
            fresh = cloud(fresh_n, 0, 30_000 + rep, 0.3)
            refs = [Ref("t", 0, i) for i in range(len(train))]
            for confidence in within:
                kc = calibrate_keys(train, ["k"] * len(train), refs, hold,
                                    ["k"] * len(hold), target_fpr=target, min_train=50,
                                    confidence=confidence, reference_size=0)
                threshold = kc.thresholds["k"]
                assert threshold is not None
                rate = fpr(kc.baselines["k"].scores(fresh, "centroid", 5), threshold)
                within[confidence] += rate <= 1.5 * target
        assert within[0.9] >= 0.9 * reps
        assert within[0.5] < within[0.9]
