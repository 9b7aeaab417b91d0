"""Per-key calibration: own thresholds with enough held-out data, pooled otherwise."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detector.calibration.keys import calibrate_keys, fit
from detector.calibration.stats import fpr
from detector.model.reservoir import Ref

D = 16


def cloud(n: int, axis: int, seed: int, spread: float) -> npt.NDArray[np.float64]:
    x = np.random.default_rng(seed).normal(scale=spread, size=(n, D))
    x[:, axis] += 1.0
    out: npt.NDArray[np.float64] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def data() -> tuple[npt.NDArray[np.float64], list[str], npt.NDArray[np.float64], list[str]]:
    train = np.concatenate([cloud(400, 0, 1, 0.2), cloud(60, 1, 2, 0.05), cloud(10, 2, 3, 0.1)])
    tkeys = ["big"] * 400 + ["small"] * 60 + ["tiny"] * 10
    hold = np.concatenate([cloud(400, 0, 4, 0.2), cloud(40, 1, 5, 0.05)])
    hkeys = ["big"] * 400 + ["small"] * 40
    return train, tkeys, hold, hkeys


class TestCalibrateKeys:
    @pytest.mark.parametrize("method", ["centroid", "knn"])
    def test_own_threshold_only_with_enough_holdout(self, method: str) -> None:
        """A key with >= min_holdout(target) held-out normals gets its own threshold at the
        target FPR; a smaller one is left to the pooled threshold; too few training
        normals give no baseline at all."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01,
                            method=method, min_train=50)  # type: ignore[arg-type]
        assert set(kc.baselines) == {"big", "small"}
        assert kc.thresholds["big"] is not None
        assert kc.thresholds["small"] is None
        assert kc.threshold("small") == kc.pooled
        big = kc.baselines["big"].scores(hold[:400], method, 5)  # type: ignore[arg-type]
        assert fpr(big, kc.thresholds["big"]) <= 0.01

    def test_key_baselines_separate_populations(self) -> None:
        """Each key's centroid points at its own population, not at the mix."""
        train, tkeys, hold, hkeys = data()
        refs = [Ref("t", 0, i) for i in range(len(train))]
        kc = calibrate_keys(train, tkeys, refs, hold, hkeys, target_fpr=0.01, min_train=50)
        glob = fit(train, refs, 100)
        small = hold[400:]
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
