"""The calibration artifact: what `detector calibrate` makes (`calibrate`, from embedded
normals and labelled anomalies) and `detector run` loads, and its JSON file.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from detector.calibration.sections import (
    Counts,
    EncodedExemplar,
    Keys,
    Metrics,
    ModelInfo,
    Reference,
    Scoring,
    Section,
    decode,
)
from detector.calibration.stats import (
    REFERENCE_SIZE,
    Floats,
    Method,
    at_precision,
    best_f1,
    bootstrap_ci,
    fpr,
    min_holdout,
    pr_auc,
    promise,
    reference_section,
    roc_auc,
    similarity_profile,
)
from detector.errors import CalibrationError, ConfigError
from detector.model.centroid import Centroid
from detector.model.reference import Rows
from detector.model.reservoir import Exemplar

ARTIFACT_SCHEMA = "detector.calibration/v2"
# v1 artifacts (no exemplars, no keys, centroid scoring) still load
READABLE_SCHEMAS = ("detector.calibration/v1", ARTIFACT_SCHEMA)
CHUNK_ROWS = 8192  # rows converted to float64 at once (8192 x 1024 dims = 64 MB)


class CalibrationArtifact(BaseModel):
    """What `detector run` loads via `scoring.calibration_file`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: str = ARTIFACT_SCHEMA
    centroid: dict[str, Any]  # Centroid.to_dict, as on the state topic
    threshold: float
    method: Method
    target: float
    model: ModelInfo
    counts: Counts
    metrics: Metrics
    scoring: Scoring = Scoring()
    created_at: str
    # v2: exemplars of the global reservoir and per-key baselines; absent in v1
    exemplars: list[EncodedExemplar] = []
    keys: Keys | None = None
    # issue 22: held-out normals that never taught the centroid; absent before, and then
    # absent from the JSON too
    reference: Reference | None = None

    def to_json(self) -> dict[str, Any]:
        body = self.model_dump()
        for name, value in self:
            if isinstance(value, Section):
                body[name] = value.to_json()
            elif isinstance(value, list):
                body[name] = [v.to_json() if isinstance(v, Section) else v for v in value]
        if self.reference is None:
            del body["reference"]
        body["schema"] = body.pop("schema_")
        return body

    def with_baselines(self, exemplars: list[dict[str, Any]],
                       keys: dict[str, Any] | None = None) -> CalibrationArtifact:
        """This artifact with the global reservoir's `exemplars`
        (detector.model.reservoir.encode_exemplars) and per-key baselines `keys`
        (detector.calibration.keys.KeyCalibration.to_json)."""
        update: dict[str, Any] = {
            "exemplars": [EncodedExemplar.model_validate(e) for e in exemplars]}
        if keys is not None:
            update["keys"] = Keys.model_validate(keys)
        return self.model_copy(update=update)

    def decoded_exemplars(self, dimension: int) -> list[Exemplar]:
        """The global reservoir's exemplars."""
        return decode(self.exemplars, dimension)

    def reference_rows(self, dimension: int) -> Rows | None:
        """The global reference sample as float32 unit rows; None when absent."""
        return None if self.reference is None else self.reference.decoded(dimension)


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
    confidence: float = 0.5,
    reference_size: int = REFERENCE_SIZE,
) -> Result:
    """Centroid from `train`, threshold from `holdout` (and labelled `anomalies`);
    `text_prefix` is what the texts were embedded with (`embedding.text_prefix`).

    With `method` target_fpr the threshold is the held-out score at
    `rank(n, target_fpr, confidence)` (`scoring.threshold_confidence`; 0.5: the median
    FPR is at most the target). At most `reference_size` held-out rows (a random subset
    drawn with `seed`) are kept as the artifact's reference sample; 0 keeps none.

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
    chosen = promise(sims, target_fpr, confidence)
    if chosen is None:
        msg = (f"{len(sims)} held-out normals cannot promise a {target_fpr:.2%} "
               f"false-positive rate at confidence {confidence}: give more normal samples, "
               f"a larger --holdout or a lower scoring.threshold_confidence")
        raise CalibrationError(msg)
    threshold, threshold_fpr = chosen
    lo, hi = bootstrap_ci(sims, target_fpr, bootstrap, seed, at_rank=threshold_fpr["rank"])
    metrics: dict[str, Any] = {
        "holdout_fpr": fpr(sims, threshold), "threshold_ci95": [lo, hi],
        "target_fpr": target_fpr,
        "holdout_similarity": {"mean": float(sims.mean()), "min": float(sims.min()),
                               "p01": float(np.quantile(sims, 0.01)),
                               "p50": float(np.median(sims))},
        "similarity_profile": similarity_profile(sims, holdout_rows, seed),
        "threshold_fpr": threshold_fpr,
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
        if method != "target_fpr":
            del metrics["threshold_fpr"]  # the promise is the target-FPR selection's
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
        reference=reference_section(holdout_rows, reference_size, seed),
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
    _check_references(artifact, path)
    if artifact.scoring.center is not None:
        # reserved for embedding post-processing; bench/quality found none worth applying
        msg = (f"calibration artifact {path} asks for scoring.center, which this detector "
               f"does not apply; recalibrate with this version")
        raise ConfigError(msg)
    return artifact


def _check_references(artifact: CalibrationArtifact, path: str) -> None:
    """Refuse reference samples whose encoded rows are not `count` rows of the model's
    dimension (a truncated or foreign artifact), before the daemon relies on them."""
    dimension = artifact.model.dimension
    named = [("reference", artifact.reference)]
    if artifact.keys is not None:
        named += [(f"keys.baselines[{key!r}].reference", b.reference)
                  for key, b in artifact.keys.baselines.items()]
    for name, ref in named:
        if ref is not None and not ref.fits(dimension):
            msg = (f"calibration artifact {path} is invalid: {name} does not hold "
                   f"{ref.count} rows of {dimension} dimensions")
            raise ConfigError(msg)


def check_compatible(artifact: CalibrationArtifact, model: str, dimension: int,
                     text_prefix: str = "") -> None:
    """Refuse an artifact made with another embedding model, dimension or text prefix
    (artifacts from before text prefixes existed were made without one)."""
    made = (artifact.model.name, artifact.model.dimension)
    if made != (model, dimension):
        msg = (f"the calibration artifact was made with {made[0]} ({made[1]} dimensions) but "
               f"the configured embedder is {model} ({dimension} dimensions); recalibrate "
               f"with `detector calibrate` or point scoring.calibration_file elsewhere")
        raise ConfigError(msg)
    made_prefix = artifact.model.text_prefix
    if made_prefix != text_prefix:
        msg = (f"the calibration artifact was made with embedding.text_prefix "
               f"{made_prefix!r} but the configured one is {text_prefix!r}: the same model "
               f"embeds prefixed texts differently; recalibrate with `detector calibrate` "
               f"or point scoring.calibration_file elsewhere")
        raise ConfigError(msg)
