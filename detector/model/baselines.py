"""What a comment is judged against: a global baseline and one per key. Pure, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from detector.config import ScoringSettings
from detector.model.centroid import Centroid
from detector.model.reservoir import Neighbour, Ref, Reservoir

Method = Literal["centroid", "knn"]
# which threshold judged a comment (alerts: baseline.threshold_source)
ThresholdSource = Literal["key", "pooled", "global"]
KEY_FIELD_RECORD_KEY = "@key"


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
    threshold: float | None = None
    base_samples: int = 0  # accepted comments the base (artifact, seed) stands for
    own: Contribution = field(init=False)

    def __post_init__(self) -> None:
        self.own = Contribution.zero(self.centroid.dimension)

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
        self.own = Contribution.zero(self.centroid.dimension)


@dataclass(frozen=True, slots=True)
class KeyBase:
    """A key's starting point from the calibration artifact."""

    centroid: Centroid
    threshold: float | None
    samples: int
    exemplars: list[tuple[npt.NDArray[np.float32], Ref]] = field(default_factory=list)


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


@dataclass(frozen=True, slots=True)
class Policy:
    """The scoring settings the baselines apply."""

    method: Method = "centroid"
    k: int = 5
    margin: float = 0.05
    update: bool = True
    key_min_samples: int = 50
    max_keys: int = 1000
    key_reservoir_size: int = 100
    explain: int = 3  # nearest exemplars attached to an anomaly
    keep_text: bool = False

    @classmethod
    def from_settings(cls, scoring: ScoringSettings) -> Policy:
        return cls(method=scoring.method, k=scoring.k, margin=scoring.margin,
                   update=scoring.update, key_min_samples=scoring.key_min_samples,
                   max_keys=scoring.max_keys, key_reservoir_size=scoring.key_reservoir_size,
                   explain=scoring.explain_exemplars, keep_text=scoring.keep_exemplar_text)


class Baselines:
    """The global baseline, the key baselines (bounded, least recently seen evicted),
    and the judging of one comment after another."""

    def __init__(self, global_: Baseline, policy: Policy, *, replica: str = "",
                 key_threshold: float | None = None,
                 bases: dict[str, KeyBase] | None = None,
                 calibration: str | None = None) -> None:
        self.global_ = global_
        self.policy = policy
        self.replica = replica
        self.key_threshold = key_threshold
        self.bases = bases or {}
        self.keys: OrderedDict[str, Baseline] = OrderedDict()
        self.evictions = 0
        self.calibration = calibration  # version of the artifact in force (alerts)
        self.on_evict: Callable[[Baseline], None] | None = None

    @property
    def dimension(self) -> int:
        return self.global_.centroid.dimension

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
        """The threshold a baseline applies and where it comes from."""
        if baseline.key is None:
            assert self.global_.threshold is not None
            return self.global_.threshold, "global"
        if baseline.threshold is not None:
            return baseline.threshold, "key"
        if self.key_threshold is not None:
            return self.key_threshold, "pooled"
        assert self.global_.threshold is not None
        return self.global_.threshold, "global"

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
            if self.on_evict is not None:
                self.on_evict(evicted)
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
        return Baseline(value, centroid, reservoir, base.threshold, base.samples)

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
        nearest: tuple[Neighbour, ...] = ()
        if anomaly and self.policy.explain:
            nearest = tuple(baseline.reservoir.nearest(x, self.policy.explain))
        version, count = baseline.centroid.version, baseline.centroid.weight
        accepted = self.policy.update and score >= threshold + self.policy.margin
        if accepted:
            kept = ref if self.policy.keep_text else Ref(ref.topic, ref.partition, ref.offset,
                                                          ref.id)
            self.global_.accept(x, kept, self.replica)
            if key is not None:
                self.key(key).accept(x, kept, self.replica)
        return Judgement(key, "global" if baseline is self.global_ else "key", score,
                       similarity, threshold, source, version, count, anomaly, accepted,
                       nearest, baseline)

    def all(self) -> list[Baseline]:
        """The global baseline followed by the key baselines held now."""
        return [self.global_, *self.keys.values()]

    def nbytes(self) -> int:
        """Memory of centroids and reservoirs (references not counted)."""
        return sum(b.reservoir.nbytes() + b.centroid.sum.nbytes * 2 for b in self.all())
