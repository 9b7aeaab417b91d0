"""Fitting baselines and calibrating per-key thresholds. Pure numpy, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from detector.calibration.stats import KEY_REFERENCE_SIZE, promise, reference_section
from detector.model.centroid import Centroid
from detector.model.reference import supports
from detector.model.reservoir import Ref, Reservoir, encode_exemplars

Floats = npt.NDArray[np.float64]
Method = Literal["centroid", "knn"]
# where a key's threshold comes from: its own held-out normals, the pooled key threshold,
# or (no pooled one either) the global threshold
Origin = Literal["own", "pooled", "global"]


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
    """Per-key baselines, their thresholds (None: use the pooled one), and the pooled one;
    what each threshold promises (the FprPromise section: rank, held-out count,
    confidence, expected FPR and its 90 % interval) and each key's reference sample."""

    baselines: dict[str, Fitted]
    thresholds: dict[str, float | None]
    holdout: dict[str, int]
    pooled: float | None
    pooled_fpr_by_key: dict[str, float] = field(default_factory=dict)
    promises: dict[str, dict[str, Any]] = field(default_factory=dict)  # own thresholds
    pooled_promise: dict[str, Any] | None = None
    references: dict[str, dict[str, Any]] = field(default_factory=dict)

    def threshold(self, key: str) -> float | None:
        own = self.thresholds.get(key)
        return own if own is not None else self.pooled

    def origin(self, key: str) -> Origin:
        if self.thresholds.get(key) is not None:
            return "own"
        return "pooled" if self.pooled is not None else "global"

    def promise(self, key: str) -> dict[str, Any] | None:
        """What the threshold applied to `key` promises (None: the global one applies)."""
        return self.promises.get(key) if self.origin(key) == "own" else self.pooled_promise

    def to_json(self, key_field: str, min_train: int, *, keep_text: bool) -> dict[str, Any]:
        """The artifact's ``keys`` section."""
        body: dict[str, Any] = {"field": key_field, "min_train": min_train,
                                "pooled_threshold": self.pooled}
        if self.pooled_promise is not None:
            body["pooled_fpr"] = self.pooled_promise
        baselines = {}
        for key, b in sorted(self.baselines.items()):
            entry: dict[str, Any] = {
                "centroid": b.centroid.to_dict(), "threshold": self.thresholds[key],
                "counts": {"train": b.train, "holdout": self.holdout.get(key, 0)},
                "exemplars": encode_exemplars(b.reservoir.exemplars(), keep_text=keep_text),
                "threshold_origin": self.origin(key)}
            promised = self.promise(key)
            if promised is not None:
                entry["threshold_fpr"] = promised
            if key in self.references:
                entry["reference"] = self.references[key]
            baselines[key] = entry
        body["baselines"] = baselines
        return body


def calibrate_keys(
    train: npt.ArrayLike, train_keys: Sequence[str | None], train_refs: Sequence[Ref],
    holdout: npt.ArrayLike, holdout_keys: Sequence[str | None], *,
    target_fpr: float, method: Method = "centroid", k: int = 5,
    reservoir_size: int = 100, min_train: int = 50, confidence: float = 0.9,
    reference_size: int = KEY_REFERENCE_SIZE, seed: int = 0,
) -> KeyCalibration:
    """Fit a baseline per key with enough training normals and choose its threshold at
    `confidence` (`scoring.key_threshold_confidence`); keep at most `reference_size` of
    each key's held-out normals (drawn with `seed`) as its reference sample."""
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
    promises: dict[str, dict[str, Any]] = {}
    references: dict[str, dict[str, Any]] = {}
    for key, baseline in baselines.items():
        idx = [i for i, k_ in enumerate(holdout_keys) if k_ == key]
        held[key] = len(idx)
        own_scores[key] = baseline.scores(hold_rows[idx], method, k) if idx else np.empty(0)
        chosen = (promise(own_scores[key], target_fpr, confidence)
                  if supports(len(idx), target_fpr, confidence) else None)
        thresholds[key] = None if chosen is None else chosen[0]
        if chosen is not None:
            promises[key] = chosen[1]
        reference = reference_section(hold_rows[idx], reference_size, seed) if idx else None
        if reference is not None:
            references[key] = reference
    pooled_scores = np.concatenate(list(own_scores.values())) if own_scores else np.empty(0)
    pooled_chosen = promise(pooled_scores, target_fpr, confidence)
    pooled = None if pooled_chosen is None else pooled_chosen[0]
    by_key = {key: float(np.mean(s < pooled)) for key, s in own_scores.items()
              if len(s) and pooled is not None}
    return KeyCalibration(baselines, thresholds, held, pooled, by_key, promises,
                          None if pooled_chosen is None else pooled_chosen[1], references)
