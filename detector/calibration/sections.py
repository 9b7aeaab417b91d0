"""The typed sections of the calibration artifact (detector.calibration.artifact): the
embedding model, sample counts, metrics with the similarity profile, the scoring
method, encoded exemplars, reference samples and per-key baselines. Each is written
back as it was read, so an artifact's JSON survives loading and saving byte for byte."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detector.model.reference import Rows, decode_rows
from detector.model.reservoir import Exemplar, decode_exemplars


class Section(BaseModel):
    """A nested section of the artifact, typed. Written back as it was read: keys absent
    from the file stay absent (`to_json`), unknown keys are kept."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True)


class ModelInfo(Section):
    """The embedding model the artifact was made with (no text prefix before v2)."""

    name: str
    dimension: int
    text_prefix: str = ""


class Counts(Section):
    """Samples behind the artifact."""

    train: int
    holdout: int
    anomalies: int = 0


class SimilaritySummary(Section):
    """The held-out normals' similarities."""

    mean: float
    min: float
    p01: float
    p50: float


class Pairwise(Section):
    """Quantiles of the held-out normals' pairwise cosines (None: fewer than 2 rows)."""

    q50: float | None = Field(None, alias="q0.5")
    q90: float | None = Field(None, alias="q0.9")
    q99: float | None = Field(None, alias="q0.99")
    q999: float | None = Field(None, alias="q0.999")
    pairs: int = 0


class SimilarityProfile(Section):
    """What drift monitoring compares live windows with (stats.similarity_profile)."""

    quantiles: list[float]
    pairwise: Pairwise


class BestF1(Section):
    threshold: float
    f1: float


class AtPrecision(Section):
    precision: float
    recall: float


class FprPromise(Section):
    """What a threshold at an order statistic of held-out scores promises
    (detector.model.reference): it is the `rank`-th smallest of `holdout` scores, chosen
    so that its false-positive rate exceeds the target with probability at most
    1 - `confidence`; its expected false-positive rate is rank / (holdout + 1) and
    `fpr_interval` the central 90 % interval."""

    rank: int
    holdout: int
    confidence: float
    expected_fpr: float
    fpr_interval: list[float]


class Metrics(Section):
    """How the threshold does on held-out normals (and labelled anomalies, when given);
    `calibrate` records them all, an artifact that lacks some still loads."""

    holdout_fpr: float | None = None
    threshold_ci95: list[float] = []
    target_fpr: float | None = None
    holdout_similarity: SimilaritySummary | None = None
    similarity_profile: SimilarityProfile | None = None  # absent before drift monitoring
    roc_auc: float | None = None  # these with labelled anomalies only
    pr_auc: float | None = None
    recall_at_target_fpr: float | None = None
    best_f1: BestF1 | None = None
    at_precision: AtPrecision | None = None
    threshold_fpr: FprPromise | None = None  # target_fpr selection; absent before issue 22


class Scoring(Section):
    """The score the threshold was chosen on (empty in v1: the centroid cosine)."""

    center: list[float] | None = None  # reserved; an artifact that sets it is refused
    method: str = "centroid"
    k: int | None = None


class ExemplarRef(Section):
    topic: str
    partition: int
    offset: int
    id: str | None = None
    text: str | None = None


class EncodedExemplar(Section):
    """One exemplar as detector.model.reservoir.encode_exemplars writes it: int8 vector
    `v` with scale `s`, or float32 `f`."""

    p: float
    ref: ExemplarRef
    origin: str = ""
    v: str | None = None
    s: float | None = None
    f: str | None = None


def decode(exemplars: list[EncodedExemplar], dimension: int) -> list[Exemplar]:
    """The reservoir's exemplars of encoded ones."""
    return decode_exemplars([e.to_json() for e in exemplars], dimension)


class Reference(Section):
    """Held-out normals that never taught the baseline: `count` unit rows as base64
    float16 (detector.model.reference.encode_rows). The daemon re-scores them against the
    baseline as it is now to re-derive its threshold."""

    rows: str
    count: int

    def decoded(self, dimension: int) -> Rows:
        rows = decode_rows(self.rows, dimension)
        if len(rows) != self.count:
            msg = f"the reference holds {len(rows)} rows, not its count {self.count}"
            raise ValueError(msg)
        return rows

    def fits(self, dimension: int) -> bool:
        """Whether the encoded text holds exactly `count` rows of `dimension` (checked
        on the base64 length, without decoding)."""
        text = self.rows
        size = len(text) * 3 // 4 - text[-2:].count("=") if text else 0
        return len(text) % 4 == 0 and size == self.count * dimension * 2


class KeyCounts(Section):
    train: int = 0
    holdout: int = 0


class KeyBaseline(Section):
    """One key's baseline (detector.calibration.keys.KeyCalibration.to_json)."""

    centroid: dict[str, Any]  # Centroid.to_dict, as on the state topic
    threshold: float | None = None  # None: the pooled key threshold applies
    counts: KeyCounts = KeyCounts()
    exemplars: list[EncodedExemplar] = []
    # issue 22: where the threshold comes from ("own" or "pooled") and what it promises
    # (for a pooled key, the pooled threshold's promise over all keys' held-out normals),
    # and the key's own held-out normals; absent in artifacts made before
    threshold_origin: str | None = None
    threshold_fpr: FprPromise | None = None
    reference: Reference | None = None

    def decoded_exemplars(self, dimension: int) -> list[Exemplar]:
        return decode(self.exemplars, dimension)

    def reference_rows(self, dimension: int) -> Rows | None:
        """The key's held-out reference normals as float32 unit rows; None when absent."""
        return None if self.reference is None else self.reference.decoded(dimension)


class Keys(Section):
    """The per-key baselines, made with `scoring.key_field` `field`."""

    field: str
    min_train: int | None = None
    pooled_threshold: float | None = None
    pooled_fpr: FprPromise | None = None  # absent before issue 22
    baselines: dict[str, KeyBaseline] = {}
