"""Fitting baselines and calibrating per-key thresholds. Pure numpy, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from detector.calibration.stats import min_holdout, threshold_at_fpr
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref, Reservoir, encode_exemplars

Floats = npt.NDArray[np.float64]
Method = Literal["centroid", "knn"]


@dataclass(slots=True)
class Fitted:
    """A baseline fitted on training normals."""

    centroid: Centroid
    reservoir: Reservoir
    train: int

    def scores(self, rows: npt.ArrayLike, method: Method, k: int) -> Floats:
        """Higher is more normal; kNN falls back to the centroid while the reservoir is empty."""
        if method == "knn" and len(self.reservoir):
            return self.reservoir.knn(rows, k)
        return self.centroid.similarity(rows)


def fit(rows: npt.ArrayLike, refs: Sequence[Ref], reservoir_size: int) -> Fitted:
    """Centroid and reservoir of the training rows (unit vectors), refs one per row."""
    matrix = np.asarray(rows, dtype=np.float64)
    reservoir = Reservoir(reservoir_size, matrix.shape[1])
    for row, ref in zip(matrix, refs, strict=True):
        reservoir.offer(row, ref)
    return Fitted(Centroid.from_vectors(matrix), reservoir, len(matrix))


@dataclass(slots=True)
class KeyCalibration:
    """Per-key baselines, their thresholds (None: use the pooled one), and the pooled one."""

    baselines: dict[str, Fitted]
    thresholds: dict[str, float | None]
    holdout: dict[str, int]
    pooled: float | None
    pooled_fpr_by_key: dict[str, float] = field(default_factory=dict)

    def threshold(self, key: str) -> float | None:
        own = self.thresholds.get(key)
        return own if own is not None else self.pooled

    def to_json(self, key_field: str, min_train: int, *, keep_text: bool) -> dict[str, Any]:
        """The artifact's ``keys`` section."""
        return {
            "field": key_field, "min_train": min_train, "pooled_threshold": self.pooled,
            "baselines": {
                key: {"centroid": b.centroid.to_dict(), "threshold": self.thresholds[key],
                      "counts": {"train": b.train, "holdout": self.holdout.get(key, 0)},
                      "exemplars": encode_exemplars(b.reservoir.exemplars(),
                                                    keep_text=keep_text)}
                for key, b in sorted(self.baselines.items())},
        }


def calibrate_keys(
    train: npt.ArrayLike, train_keys: Sequence[str | None], train_refs: Sequence[Ref],
    holdout: npt.ArrayLike, holdout_keys: Sequence[str | None], *,
    target_fpr: float, method: Method = "centroid", k: int = 5,
    reservoir_size: int = 100, min_train: int = 50,
) -> KeyCalibration:
    """Fit a baseline per key with enough training normals and choose its threshold."""
    train_rows = np.asarray(train, dtype=np.float64)
    hold_rows = np.asarray(holdout, dtype=np.float64)
    baselines: dict[str, Fitted] = {}
    for key in sorted({k_ for k_ in train_keys if k_ is not None}):
        idx = [i for i, k_ in enumerate(train_keys) if k_ == key]
        if len(idx) >= min_train:
            baselines[key] = fit(train_rows[idx], [train_refs[i] for i in idx], reservoir_size)
    thresholds: dict[str, float | None] = {}
    held: dict[str, int] = {}
    own_scores: dict[str, Floats] = {}
    for key, baseline in baselines.items():
        idx = [i for i, k_ in enumerate(holdout_keys) if k_ == key]
        held[key] = len(idx)
        own_scores[key] = baseline.scores(hold_rows[idx], method, k) if idx else np.empty(0)
        enough = len(idx) >= min_holdout(target_fpr)
        thresholds[key] = threshold_at_fpr(own_scores[key], target_fpr) if enough else None
    pooled_scores = np.concatenate(list(own_scores.values())) if own_scores else np.empty(0)
    pooled = threshold_at_fpr(pooled_scores, target_fpr) if len(pooled_scores) else None
    by_key = {key: float(np.mean(s < pooled)) for key, s in own_scores.items()
              if len(s) and pooled is not None}
    return KeyCalibration(baselines, thresholds, held, pooled, by_key)
