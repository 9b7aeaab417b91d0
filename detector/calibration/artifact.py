"""Calibration statistics and the calibration artifact. Pure numpy, no I/O but the
artifact's JSON file.

The centroid is built on a training split of the normal samples and the threshold is
chosen on the held-out normals, so it is not biased by the samples that made the
centroid. An alert fires when ``similarity < threshold``, so the false-positive rate of
a threshold t on normals is ``mean(sims < t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from detector.errors import CalibrationError, ConfigError
from detector.model.centroid import Centroid

ARTIFACT_SCHEMA = "detector.calibration/v2"
# v1 artifacts (no exemplars, no keys, centroid scoring) still load
READABLE_SCHEMAS = ("detector.calibration/v1", ARTIFACT_SCHEMA)
Floats = npt.NDArray[np.float64]
Method = Literal["target_fpr", "best_f1", "target_precision"]
CHUNK_ROWS = 8192  # rows converted to float64 at once (8192 x 1024 dims = 64 MB)


def min_holdout(target_fpr: float) -> int:
    """Held-out normals needed for a target FPR to mean something (3 expected alerts)."""
    return math.ceil(3 / target_fpr)


def split(n: int, holdout: float, seed: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Shuffled (train, held-out) indices; both non-empty."""
    if n < 2:
        msg = f"need at least 2 normal samples, got {n}"
        raise CalibrationError(msg)
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, round(n * holdout)))
    return np.sort(order[held:]), np.sort(order[:held])


def threshold_at_fpr(normal_sims: npt.ArrayLike, target_fpr: float) -> float:
    """The largest cut with at most `target_fpr` of these normals below it."""
    sims = np.sort(np.asarray(normal_sims, dtype=np.float64))
    k = math.floor(target_fpr * len(sims))
    return float(sims[min(k, len(sims) - 1)])


def fpr(normal_sims: npt.ArrayLike, threshold: float) -> float:
    return float(np.mean(np.asarray(normal_sims) < threshold))


def bootstrap_ci(normal_sims: npt.ArrayLike, target_fpr: float, rounds: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `threshold_at_fpr`, in O(n + rounds) memory.

    The estimate is the order statistic k = floor(target_fpr * n) of the sorted normals.
    Resampling n values with replacement is drawing n indices uniformly from 0..n-1 into
    the sorted array, and the resample's k-th smallest value is the sorted array at the
    resample's k-th smallest index. That index is floor(n * U) where U, the (k+1)-th
    smallest of n independent uniforms, is Beta(k+1, n-k) distributed: one Beta draw per
    round gives exactly the resampling bootstrap's distribution without materialising
    rounds x n resamples (1,000 x 300,000 floats were 2.4 GB).
    """
    sims = np.sort(np.asarray(normal_sims, dtype=np.float64))
    n = len(sims)
    k = min(math.floor(target_fpr * n), n - 1)
    rng = np.random.default_rng(seed)
    index = np.minimum((n * rng.beta(k + 1, n - k, size=rounds)).astype(np.intp), n - 1)
    estimates = sims[index]
    tail = (1 - level) / 2
    return float(np.quantile(estimates, tail)), float(np.quantile(estimates, 1 - tail))


PROFILE_LEVELS = 101  # similarity quantiles stored: every percentile, 0 to 100
PAIRWISE_SAMPLE = 1_000  # held-out rows whose pairwise cosines are profiled


def similarity_profile(holdout_sims: npt.ArrayLike, holdout_rows: npt.ArrayLike,
                       seed: int = 0) -> dict[str, Any]:
    """What drift monitoring (detector.model.drift) compares live windows with: the held-out
    normals' similarity quantiles at every percentile, and quantiles of their pairwise
    cosines (on at most PAIRWISE_SAMPLE rows), the model's own scale of "near"."""
    sims = np.asarray(holdout_sims, dtype=np.float64)
    rows = np.asarray(holdout_rows, dtype=np.float64)
    if len(rows) > PAIRWISE_SAMPLE:
        rows = rows[np.random.default_rng(seed).choice(len(rows), PAIRWISE_SAMPLE,
                                                       replace=False)]
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    pairs = (rows @ rows.T)[np.triu_indices(len(rows), k=1)]
    levels = (0.5, 0.9, 0.99, 0.999)
    pairwise: dict[str, Any] = {f"q{level}": float(np.quantile(pairs, level)) if len(pairs)
                                else None for level in levels}
    pairwise["pairs"] = len(pairs)
    return {"quantiles": [float(q) for q in np.quantile(sims, np.linspace(0, 1,
                                                                          PROFILE_LEVELS))],
            "pairwise": pairwise}


def roc_auc(normal_sims: npt.ArrayLike, anomaly_sims: npt.ArrayLike) -> float:
    """P(an anomaly scores below a normal), ties counting half (Mann-Whitney U), in
    O((n + m) log n): each anomaly's count of higher and tied normals by binary search."""
    normal = np.sort(np.asarray(normal_sims, dtype=np.float64))
    anomaly = np.asarray(anomaly_sims, dtype=np.float64)
    below = np.searchsorted(normal, anomaly, side="left")
    not_above = np.searchsorted(normal, anomaly, side="right")
    higher = len(normal) - not_above
    u = float(np.sum(higher)) + 0.5 * float(np.sum(not_above - below))
    return u / (len(anomaly) * len(normal))


def roc_points(normal_sims: npt.ArrayLike, anomaly_sims: npt.ArrayLike,
               max_points: int = 4096) -> tuple[Floats, Floats]:
    """(false-positive rates, true-positive rates) of every distinct cut, from (0, 0) to
    (1, 1), in O((n + m) log(n + m)); thinned to about `max_points` for plotting."""
    normal = np.asarray(normal_sims, dtype=np.float64)
    anomaly = np.asarray(anomaly_sims, dtype=np.float64)
    _, tp, fp, _ = _curve(normal, anomaly)
    fpr_ = np.r_[0.0, fp / max(1, len(normal))]
    tpr_ = np.r_[0.0, tp / max(1, len(anomaly))]
    if len(fpr_) > max_points:
        keep = np.unique(np.linspace(0, len(fpr_) - 1, max_points).astype(np.intp))
        fpr_, tpr_ = fpr_[keep], tpr_[keep]
    return fpr_, tpr_


def _curve(normal_sims: Floats, anomaly_sims: Floats) -> tuple[Floats, Floats, Floats, Floats]:
    """(thresholds, true positives, false positives) for every distinct cut."""
    sims = np.concatenate([anomaly_sims, normal_sims])
    is_anomaly = np.concatenate([np.ones(len(anomaly_sims)), np.zeros(len(normal_sims))])
    order = np.argsort(sims, kind="mergesort")
    sims, is_anomaly = sims[order], is_anomaly[order]
    tp = np.cumsum(is_anomaly)
    fp = np.cumsum(1 - is_anomaly)
    last = np.r_[np.diff(sims) != 0, True]  # keep the last index of each tie group
    # alerting on sims <= sims[i] is the threshold just above sims[i]
    cuts = np.nextafter(sims[last], np.inf)
    return cuts, tp[last], fp[last], sims[last]


def pr_auc(normal_sims: npt.ArrayLike, anomaly_sims: npt.ArrayLike) -> float:
    """Average precision with anomalies as positives."""
    _, tp, fp, _ = _curve(np.asarray(normal_sims, float), np.asarray(anomaly_sims, float))
    precision = tp / (tp + fp)
    recall = tp / max(1.0, float(len(np.asarray(anomaly_sims))))
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * precision))


def best_f1(normal_sims: npt.ArrayLike, anomaly_sims: npt.ArrayLike) -> tuple[float, float]:
    """(threshold, F1) maximising F1."""
    cuts, tp, fp, _ = _curve(np.asarray(normal_sims, float), np.asarray(anomaly_sims, float))
    positives = len(np.asarray(anomaly_sims))
    f1 = 2 * tp / (tp + fp + positives)
    i = int(np.argmax(f1))
    return float(cuts[i]), float(f1[i])


def at_precision(normal_sims: npt.ArrayLike, anomaly_sims: npt.ArrayLike, target: float
                 ) -> tuple[float, float, float]:
    """(threshold, precision, recall) with the most recall at precision >= target."""
    cuts, tp, fp, _ = _curve(np.asarray(normal_sims, float), np.asarray(anomaly_sims, float))
    precision = tp / (tp + fp)
    ok = np.flatnonzero(precision >= target)
    if len(ok) == 0:
        msg = f"no threshold reaches precision {target}; best is {precision.max():.3f}"
        raise CalibrationError(msg)
    i = int(ok[-1])
    return float(cuts[i]), float(precision[i]), float(tp[i] / len(np.asarray(anomaly_sims)))


class CalibrationArtifact(BaseModel):
    """What `detector run` loads via `scoring.calibration_file`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: str = ARTIFACT_SCHEMA
    centroid: dict[str, Any]
    threshold: float
    method: Method
    target: float
    model: dict[str, Any]
    counts: dict[str, int]
    metrics: dict[str, Any]
    scoring: dict[str, Any] = {}
    created_at: str
    # v2: exemplars of the global reservoir (detector.model.reservoir.encode_exemplars) and
    # per-key baselines (detector.calibration.keys.KeyCalibration.to_json); absent in v1
    exemplars: list[dict[str, Any]] = []
    keys: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body = self.model_dump()
        body["schema"] = body.pop("schema_")
        return body


@dataclass(frozen=True)
class Result:
    """The outcome of one calibration: artifact plus what the report shows."""

    artifact: CalibrationArtifact
    holdout_sims: Floats
    anomaly_sims: Floats


def calibrate(
    train: npt.ArrayLike,
    holdout: npt.ArrayLike,
    anomalies: npt.ArrayLike | None,
    *,
    model: str,
    dimension: int,
    method: Method = "target_fpr",
    target_fpr: float = 0.01,
    target_precision: float = 0.9,
    bootstrap: int = 1000,
    seed: int = 0,
    text_prefix: str = "",
    score: Callable[[Floats], Floats] | None = None,
    scoring: dict[str, Any] | None = None,
) -> Result:
    """Centroid from `train`, threshold from `holdout` (and labelled `anomalies`);
    `text_prefix` is what the texts were embedded with (`embedding.text_prefix`).

    `score` replaces the centroid cosine as the score the threshold applies to (e.g. the
    kNN score of detector.calibration.keys); `scoring` is recorded in the artifact.
    """
    holdout_rows = np.asarray(holdout)
    if len(holdout_rows) < min_holdout(target_fpr):
        msg = (f"{len(holdout_rows)} held-out normals cannot calibrate a {target_fpr:.2%} "
               f"false-positive rate: need at least {min_holdout(target_fpr)} (give more "
               f"normal samples, a larger --holdout, or a larger --target-fpr)")
        raise CalibrationError(msg)
    centroid = _centroid(train)

    def by_centroid(rows: Floats) -> Floats:
        return _similarities(centroid, rows)

    scorer = score or by_centroid
    sims = scorer(holdout_rows)
    anomaly_sims = (scorer(np.asarray(anomalies))
                    if anomalies is not None and len(np.asarray(anomalies)) else np.empty(0))
    threshold = threshold_at_fpr(sims, target_fpr)
    lo, hi = bootstrap_ci(sims, target_fpr, bootstrap, seed)
    metrics: dict[str, Any] = {
        "holdout_fpr": fpr(sims, threshold), "threshold_ci95": [lo, hi],
        "target_fpr": target_fpr,
        "holdout_similarity": {"mean": float(sims.mean()), "min": float(sims.min()),
                               "p01": float(np.quantile(sims, 0.01)),
                               "p50": float(np.median(sims))},
        "similarity_profile": similarity_profile(sims, holdout_rows, seed),
    }
    target = target_fpr
    if len(anomaly_sims):
        metrics["roc_auc"] = roc_auc(sims, anomaly_sims)
        metrics["pr_auc"] = pr_auc(sims, anomaly_sims)
        metrics["recall_at_target_fpr"] = float(np.mean(anomaly_sims < threshold))
        f1_cut, f1 = best_f1(sims, anomaly_sims)
        metrics["best_f1"] = {"threshold": f1_cut, "f1": f1}
        if method == "best_f1":
            threshold, target = f1_cut, f1
        elif method == "target_precision":
            threshold, precision, recall = at_precision(sims, anomaly_sims, target_precision)
            metrics["at_precision"] = {"precision": precision, "recall": recall}
            target = target_precision
        metrics["holdout_fpr"] = fpr(sims, threshold)
    elif method != "target_fpr":
        msg = f"--select {method} needs labelled anomalies (--anomalies or --label-field)"
        raise CalibrationError(msg)
    artifact = CalibrationArtifact(
        centroid=centroid.to_dict(), threshold=threshold, method=method, target=target,
        model={"name": model, "dimension": dimension, "text_prefix": text_prefix},
        counts={"train": len(np.asarray(train)), "holdout": len(holdout_rows),
                "anomalies": len(anomaly_sims)},
        metrics=metrics, scoring={"center": None, "method": "centroid"} | (scoring or {}),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return Result(artifact, sims, anomaly_sims)


def _centroid(train: npt.ArrayLike) -> Centroid:
    """`Centroid.from_vectors` over row chunks: float64 copies of CHUNK_ROWS rows at a
    time, never of the whole (n, d) input."""
    rows = np.asarray(train)
    if rows.ndim != 2 or rows.shape[0] == 0:
        return Centroid.from_vectors(rows)  # raises its own error
    total = np.zeros(rows.shape[1])
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start:start + CHUNK_ROWS].astype(np.float64)
        total += (chunk / np.linalg.norm(chunk, axis=1, keepdims=True)).sum(axis=0)
    return Centroid(total, float(len(rows)), 0, 1.0)


def _similarities(centroid: Centroid, vectors: npt.NDArray[Any]) -> Floats:
    """Similarity of each row to the centroid, CHUNK_ROWS rows at a time."""
    out = np.empty(len(vectors))
    for start in range(0, len(vectors), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = centroid.similarity(vectors[start:start + CHUNK_ROWS])
    return out


def save_artifact(artifact: CalibrationArtifact, path: Path) -> None:
    import orjson

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(artifact.to_json(), option=orjson.OPT_INDENT_2))


def load_artifact(path: Path) -> CalibrationArtifact:
    """Read an artifact; a missing or invalid file is a `ConfigError` naming it."""
    import orjson

    try:
        body = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        msg = f"cannot read calibration artifact {path}: {exc}"
        raise ConfigError(msg) from None
    return parse_artifact(body, str(path))


def parse_artifact(body: Any, name: str) -> CalibrationArtifact:
    """An artifact from its JSON body; an invalid one is a `ConfigError` naming `name`."""
    path = name
    if not isinstance(body, dict) or body.get("schema") not in READABLE_SCHEMAS:
        msg = f"{path} is not a {ARTIFACT_SCHEMA} (or v1) calibration artifact"
        raise ConfigError(msg)
    body = dict(body)
    body["schema_"] = body.pop("schema")
    try:
        artifact = CalibrationArtifact(**body)
        Centroid.from_dict(artifact.centroid)
    except (ValidationError, ValueError, KeyError) as exc:
        msg = f"calibration artifact {path} is invalid: {exc}"
        raise ConfigError(msg) from None
    if artifact.scoring.get("center") is not None:
        # reserved for embedding post-processing; bench/quality found none worth applying
        msg = (f"calibration artifact {path} asks for scoring.center, which this detector "
               f"does not apply; recalibrate with this version")
        raise ConfigError(msg)
    return artifact


def check_compatible(artifact: CalibrationArtifact, model: str, dimension: int,
                     text_prefix: str = "") -> None:
    """Refuse an artifact made with another embedding model, dimension or text prefix
    (artifacts from before text prefixes existed were made without one)."""
    made = (artifact.model.get("name"), artifact.model.get("dimension"))
    if made != (model, dimension):
        msg = (f"the calibration artifact was made with {made[0]} ({made[1]} dimensions) but "
               f"the configured embedder is {model} ({dimension} dimensions); recalibrate "
               f"with `detector calibrate` or point scoring.calibration_file elsewhere")
        raise ConfigError(msg)
    made_prefix = artifact.model.get("text_prefix", "")
    if made_prefix != text_prefix:
        msg = (f"the calibration artifact was made with embedding.text_prefix "
               f"{made_prefix!r} but the configured one is {text_prefix!r}: the same model "
               f"embeds prefixed texts differently; recalibrate with `detector calibrate` "
               f"or point scoring.calibration_file elsewhere")
        raise ConfigError(msg)
