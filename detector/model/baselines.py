"""What a comment is judged against: a global baseline and one per key. Pure, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from detector.config import ScoringSettings
from detector.io.records import Position
from detector.model import reference
from detector.model.centroid import Centroid
from detector.model.label_memory import LabelMemory, Match
from detector.model.reference import Derived, Sample
from detector.model.reservoir import Neighbour, Ref, Reservoir

Method = Literal["centroid", "knn"]
# which threshold judged a comment (alerts: baseline.threshold_source)
ThresholdSource = Literal["key", "pooled", "global"]
KEY_FIELD_RECORD_KEY = "@key"
# How stale a derived threshold may get: re-derived after this many updates of its
# baseline, or this share of its samples, whichever is larger (cost, not model scale).
REFRESH_MIN = 100
REFRESH_FRACTION = 0.01


@dataclass(slots=True)
class Contribution:
    """What one replica's updates added to a centroid's S and w, and how many updates."""

    sum: npt.NDArray[np.float64]
    weight: float = 0.0
    updates: int = 0

    @classmethod
    def zero(cls, dimension: int) -> Contribution:
        return cls(np.zeros(dimension))

    def minus(self, other: Contribution) -> Contribution:
        return Contribution(self.sum - other.sum, self.weight - other.weight,
                            self.updates - other.updates)

    def copy(self) -> Contribution:
        return Contribution(self.sum.copy(), self.weight, self.updates)


@dataclass(slots=True)
class Baseline:
    """One baseline: centroid, own threshold (None: use the fallback), reservoir, and this
    replica's contribution to the centroid since the base."""

    key: str | None  # None for the global baseline
    centroid: Centroid
    reservoir: Reservoir
    threshold: float | None = None  # fixed: calibrated, or None for the fallback
    base_samples: int = 0  # accepted comments the base (artifact, seed) stands for
    reference: Sample | None = None  # normals that never teach it (threshold follows)
    own: Contribution = field(init=False)
    derived: Derived | None = field(init=False, default=None)
    derived_version: int = field(init=False, default=-1)
    base_version: int = field(init=False, default=0)  # the centroid's version at its base

    def __post_init__(self) -> None:
        self.own = Contribution.zero(self.centroid.dimension)
        self.base_version = self.centroid.version

    @property
    def samples(self) -> int:
        """Accepted comments behind this baseline (base plus every replica's updates)."""
        return self.base_samples + self.centroid.version

    def accept(self, row: npt.NDArray[np.float64], ref: Ref, origin: str) -> None:
        """Move the centroid toward `row` (counting it as ours) and offer it to the reservoir."""
        before_sum, before_weight = self.centroid.sum.copy(), self.centroid.weight
        self.centroid.add(row)
        self.count_own(before_sum, before_weight)
        self.reservoir.offer(row, ref, origin=origin)

    def count_own(self, before_sum: npt.NDArray[np.float64], before_weight: float,
                  updates: int = 1) -> None:
        """Count the centroid's move since (`before_sum`, `before_weight`), made by
        `updates` local updates (accepted comments, labels), as this replica's contribution."""
        self.own.sum += self.centroid.sum - before_sum
        self.own.weight += self.centroid.weight - before_weight
        self.own.updates += updates

    def learn(self, increment: npt.NDArray[np.float64], weight: float) -> None:
        """Merge an increment (a label's teaching, or its undoing with negative values)
        into the centroid, counted as one update of this replica's contribution."""
        self.centroid.merge(increment, weight)
        self.own.sum += increment
        self.own.weight += weight
        self.own.updates += 1

    def restore(self, contribution: Contribution) -> None:
        """At start: take back this replica's own published contribution (the centroid
        moves by it and it is counted as ours)."""
        self.centroid.merge(contribution.sum, contribution.weight, contribution.updates)
        self.own = contribution.copy()

    def rebase(self, fresh: Baseline) -> None:
        """Start again from `fresh`'s base in place (holders of this baseline and of its
        centroid see it): centroid, reservoir, threshold, base samples; nothing own yet."""
        self.centroid.assign(fresh.centroid)
        self.reservoir = fresh.reservoir
        self.threshold = fresh.threshold
        self.base_samples = fresh.base_samples
        self.reference = fresh.reference
        self.derived, self.derived_version = None, -1
        self.base_version = self.centroid.version
        self.own = Contribution.zero(self.centroid.dimension)


@dataclass(frozen=True, slots=True)
class KeyBase:
    """A key's starting point from the calibration artifact."""

    centroid: Centroid
    threshold: float | None
    samples: int
    exemplars: list[tuple[npt.NDArray[np.float32], Ref]] = field(default_factory=list)
    reference: Sample | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    """How one comment was judged."""

    key: str | None  # the comment's key value
    judged_by: Literal["key", "global"]
    score: float  # the value compared with the threshold
    similarity: float  # cosine to the judging baseline's centroid
    threshold: float
    threshold_source: ThresholdSource
    centroid_version: int
    centroid_count: float
    anomaly: bool
    accepted: bool
    nearest: tuple[Neighbour, ...] = ()
    baseline: Baseline | None = field(default=None, compare=False, repr=False)
    label: Match | None = None  # the operator label that decided, overriding the threshold

    @property
    def reason(self) -> str | None:
        """Why a label decided: ``suppressed by label <source>`` or ``matches labelled
        anomaly <source>`` (None: the threshold decided)."""
        if self.label is None:
            return None
        ident = self.label.ident
        named = "/".join(map(str, ident.astuple())) if isinstance(ident, Position) \
            else str(ident)
        if self.label.kind == "normal":
            return f"suppressed by label {named}"
        return f"matches labelled anomaly {named}"


@dataclass(frozen=True, slots=True)
class Policy:
    """The scoring settings the baselines apply."""

    method: Method = "centroid"
    k: int = 5
    update: bool = True
    target_fpr: float = 0.01
    confidence: float = 0.5  # of the global threshold (detector.model.reference.rank)
    key_confidence: float = 0.9  # of a key's own threshold
    admit_quantile: float = 0.05  # the gate: this quantile of the reference scores
    key_min_samples: int = 50
    max_keys: int = 1000
    key_reservoir_size: int = 100
    explain: int = 3  # nearest exemplars attached to an anomaly
    keep_text: bool = False

    @classmethod
    def from_settings(cls, scoring: ScoringSettings) -> Policy:
        return cls(method=scoring.method, k=scoring.k, update=scoring.update,
                   target_fpr=scoring.target_fpr, confidence=scoring.threshold_confidence,
                   key_confidence=scoring.key_threshold_confidence,
                   admit_quantile=scoring.admit_quantile, key_min_samples=scoring.key_min_samples,
                   max_keys=scoring.max_keys, key_reservoir_size=scoring.key_reservoir_size,
                   explain=scoring.explain_exemplars, keep_text=scoring.keep_exemplar_text)


class Baselines:
    """The global baseline, the key baselines (bounded, least recently seen evicted),
    and the judging of one comment after another."""

    def __init__(self, global_: Baseline, policy: Policy, *, replica: str = "",
                 key_threshold: float | None = None,
                 bases: dict[str, KeyBase] | None = None,
                 calibration: str | None = None,
                 memory: LabelMemory | None = None) -> None:
        self.global_ = global_
        self.memory = memory  # operator labels consulted before the threshold
        self.policy = policy
        self.replica = replica
        self.key_threshold = key_threshold
        self.bases = bases or {}
        self.keys: OrderedDict[str, Baseline] = OrderedDict()
        self.evictions = 0
        self.calibration = calibration  # version of the artifact in force (alerts)
        self._on_evict: list[Callable[[Baseline], None]] = []

    @property
    def dimension(self) -> int:
        return self.global_.centroid.dimension

    def when_evicted(self, forget: Callable[[Baseline], None]) -> None:
        """Call `forget` with every key baseline evicted from now on (sharing drops what it
        tracked for it)."""
        self._on_evict.append(forget)

    def rebase(self, fresh: Baselines, calibration: str | None) -> int:
        """Start again from `fresh` (built from the artifact of version `calibration`): the
        global baseline in place, the pooled key threshold and the key bases; the key
        baselines held are dropped (returns how many), to start again on their next comment."""
        self.global_.rebase(fresh.global_)
        self.key_threshold = fresh.key_threshold
        self.bases = fresh.bases
        dropped = len(self.keys)
        self.keys.clear()
        self.calibration = calibration
        return dropped

    def threshold_of(self, baseline: Baseline) -> tuple[float, ThresholdSource]:
        """The threshold a baseline applies and where it comes from: derived from its
        reference normals when it has them, else its fixed one, else the pooled key
        threshold, else the global one."""
        if baseline.key is None:
            derived = self.refresh(baseline)
            if derived is not None:
                return derived.threshold, "global"
            assert self.global_.threshold is not None
            return self.global_.threshold, "global"
        derived = self.refresh(baseline)
        if derived is not None:
            return derived.threshold, "key"
        if baseline.threshold is not None:
            return baseline.threshold, "key"
        if self.key_threshold is not None:
            return self.key_threshold, "pooled"
        return self.threshold_of(self.global_)[0], "global"

    def gate_of(self, baseline: Baseline, threshold: float) -> float:
        """The score at or above which a comment judged by `baseline` teaches it."""
        derived = baseline.derived
        return threshold if derived is None else max(threshold, derived.gate)

    def refresh(self, baseline: Baseline, *, force: bool = False) -> Derived | None:
        """The baseline's threshold and gate derived from its reference normals against
        its current state (re-derived when stale or `force`d); None without a usable
        reference (none, too few for the target, an empty centroid)."""
        sample = baseline.reference
        if sample is None:
            return None
        version = baseline.centroid.version
        stale = max(REFRESH_MIN, REFRESH_FRACTION * baseline.samples)
        if not force and baseline.derived_version >= 0 \
                and version - baseline.derived_version < stale:
            return baseline.derived
        baseline.derived_version = version
        baseline.derived = None
        confidence = self.policy.confidence if baseline.key is None \
            else self.policy.key_confidence
        if baseline.centroid.weight <= 0 or not reference.supports(
                len(sample), self.policy.target_fpr, confidence):
            return None
        scores = self.reference_scores(baseline, sample)
        if scores is None:
            return None
        derived = reference.derive(scores, self.policy.target_fpr, confidence,
                                   self.policy.admit_quantile)
        if derived is not None and baseline.threshold is not None \
                and version - baseline.base_version < REFRESH_MIN:
            # the base as calibrated: its threshold came from the full-precision held-out
            # scores; the reference (float16, perhaps a subset) takes over once it learns
            derived = replace(derived, threshold=baseline.threshold,
                              gate=max(baseline.threshold, derived.gate))
        baseline.derived = derived
        return derived

    def reference_scores(self, baseline: Baseline, sample: Sample
                         ) -> npt.NDArray[np.float64] | None:
        """Scores of the reference rows against the baseline as a comment's would be;
        leave-one-out for rows inside the centroid (None where that cannot be done: kNN
        over a reservoir that holds them, or a decayed centroid)."""
        rows = sample.rows
        if self.policy.method == "knn" and len(baseline.reservoir):
            if sample.in_centroid:
                return None
            return np.asarray(baseline.reservoir.knn(rows, self.policy.k), dtype=np.float64)
        if sample.in_centroid:
            if baseline.centroid.decay < 1.0:
                return None
            return reference.leave_one_out(rows, baseline.centroid.sum)
        return np.asarray(rows @ baseline.centroid.vector, dtype=np.float64)

    def key(self, value: str, *, seen: bool = True) -> Baseline:
        """The baseline of a key value, created if new. `seen` marks it as most recently
        seen; without it (another replica's state for a key this one has not seen) a new
        key goes to the front of the eviction order, so it cannot push out keys in use."""
        baseline = self.keys.get(value)
        if baseline is not None:
            if seen:
                self.keys.move_to_end(value)
            return baseline
        while len(self.keys) >= self.policy.max_keys:
            _, evicted = self.keys.popitem(last=False)
            self.evictions += 1
            for forget in self._on_evict:
                forget(evicted)
        baseline = self._new(value)
        self.keys[value] = baseline
        if not seen:
            self.keys.move_to_end(value, last=False)
        return baseline

    def _new(self, value: str) -> Baseline:
        reservoir = Reservoir(self.policy.key_reservoir_size, self.dimension)
        base = self.bases.get(value)
        if base is None:
            return Baseline(value, Centroid.empty(self.dimension, self.global_.centroid.decay),
                            reservoir)
        for vector, ref in base.exemplars:
            reservoir.offer(vector, ref)
        centroid = base.centroid.copy(decay=self.global_.centroid.decay)
        return Baseline(value, centroid, reservoir, base.threshold, base.samples,
                        base.reference)

    def judging(self, key: str | None) -> Baseline:
        """The baseline a comment with this key is judged against."""
        if key is None:
            return self.global_
        baseline = self.key(key)
        if baseline.samples >= self.policy.key_min_samples:
            return baseline
        return self.global_

    def score(self, baseline: Baseline, row: npt.NDArray[np.float64]) -> tuple[float, float]:
        """(score, centroid similarity) of one unit row against a baseline."""
        similarity = float(row @ baseline.centroid.vector)
        if self.policy.method == "knn" and len(baseline.reservoir):
            return float(baseline.reservoir.knn(row, self.policy.k)[0]), similarity
        return similarity, similarity

    def judge(self, row: npt.ArrayLike, key: str | None, ref: Ref) -> Judgement:
        """Score one comment, decide, and learn from it when it is confidently normal."""
        x = np.asarray(row, dtype=np.float64)
        baseline = self.judging(key)
        score, similarity = self.score(baseline, x)
        threshold, source = self.threshold_of(baseline)
        anomaly = score < threshold
        # --- operator labels: a near duplicate of a labelled comment is decided by its
        # label, and teaches nothing (detector.model.label_memory)
        label = self.memory.match(x)[0] if self.memory is not None and len(self.memory) \
            else None
        if label is not None:
            anomaly = label.kind == "anomaly"
        # ---
        nearest: tuple[Neighbour, ...] = ()
        if anomaly and self.policy.explain:
            nearest = tuple(baseline.reservoir.nearest(x, self.policy.explain))
        version, count = baseline.centroid.version, baseline.centroid.weight
        accepted = label is None and self.policy.update \
            and score >= self.gate_of(baseline, threshold)
        if accepted:
            kept = ref if self.policy.keep_text else Ref(ref.topic, ref.partition, ref.offset,
                                                          ref.id)
            self.global_.accept(x, kept, self.replica)
            if key is not None:
                self.key(key).accept(x, kept, self.replica)
        return Judgement(key, "global" if baseline is self.global_ else "key", score,
                       similarity, threshold, source, version, count, anomaly, accepted,
                       nearest, baseline, label)

    def all(self) -> list[Baseline]:
        """The global baseline followed by the key baselines held now."""
        return [self.global_, *self.keys.values()]

    def nbytes(self) -> int:
        """Memory of centroids and reservoirs (references not counted)."""
        return sum(b.reservoir.nbytes() + b.centroid.sum.nbytes * 2 for b in self.all())
