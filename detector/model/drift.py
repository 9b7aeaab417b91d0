"""Drift monitoring: windows of scored comments tested against the calibration. Pure: no
I/O, no clock (the caller passes the time).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

DRIFT_SCHEMA = "detector.drift/v1"
GLOBAL = None  # the stream key of all traffic
Floats = npt.NDArray[np.float64]
Sample = npt.NDArray[np.float32]
Classification = Literal["campaign", "mixed", "broad"]


def beta_binomial_sf(k: int, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ Beta-binomial(n, a, b)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_first = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                 + _log_beta(k + a, n - k + b) - _log_beta(a, b))
    x = np.arange(k, n, dtype=np.float64)  # pmf(x+1) / pmf(x) for x = k .. n-1
    steps = np.log(n - x) - np.log(x + 1) + np.log(x + a) - np.log(n - x - 1 + b)
    logs = log_first + np.concatenate([[0.0], np.cumsum(steps)])
    top = float(logs.max())
    return min(1.0, math.exp(top) * float(np.exp(logs - top).sum()))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def ks_below(window_sims: Floats, quantiles: Floats) -> float:
    """sup_x (F_window(x) - F_ref(x)), F_ref interpolating equally spaced quantiles."""
    x = np.sort(window_sims)
    levels = np.linspace(0.0, 1.0, len(quantiles))
    ref_cdf = np.interp(x, quantiles, levels)
    ecdf = np.arange(1, len(x) + 1) / len(x)
    return float(max(0.0, (ecdf - ref_cdf).max()))


@dataclass(frozen=True, slots=True)
class Reference:
    """What windows are compared with, from a calibration artifact."""

    threshold: float
    alert_prior: tuple[float, float]  # Beta(a, b) of the threshold's false-positive rate
    quantiles: Floats  # held-out similarities at equally spaced levels 0 .. 1
    holdout: int
    near_duplicate: float  # cosine at or above which two comments are near-duplicates

    @classmethod
    def from_calibration(cls, threshold: float, holdout: int, holdout_fpr: float,
                         profile: Mapping[str, Any]) -> Reference:
        """From an artifact's threshold, counts.holdout, metrics.holdout_fpr and
        metrics.similarity_profile (artifacts made before it existed cannot be used)."""
        k = round(holdout_fpr * holdout)
        q999 = profile["pairwise"]["q0.999"]
        if q999 is None:
            msg = "the similarity profile has no pairwise quantiles (fewer than 2 rows)"
            raise ValueError(msg)
        quantiles = np.asarray(profile["quantiles"], dtype=np.float64)
        if quantiles.ndim != 1 or len(quantiles) < 2 or np.any(np.diff(quantiles) < 0):
            msg = "similarity profile quantiles must be a non-decreasing list"
            raise ValueError(msg)
        return cls(threshold, (k + 1.0, float(holdout - k)), quantiles, holdout,
                   (1.0 + float(q999)) / 2)

    @classmethod
    def from_artifact(cls, artifact: Mapping[str, Any]) -> Reference:
        """From an artifact's JSON body (`CalibrationArtifact.to_json()`)."""
        metrics = artifact["metrics"]
        if "similarity_profile" not in metrics:
            msg = "the calibration artifact has no similarity profile: recalibrate"
            raise ValueError(msg)
        return cls.from_calibration(float(artifact["threshold"]),
                                    int(artifact["counts"]["holdout"]),
                                    float(metrics["holdout_fpr"]),
                                    metrics["similarity_profile"])

    @property
    def expected_rate(self) -> float:
        a, b = self.alert_prior
        return a / (a + b)

    def rescored(self, threshold: float, rank: int, scores: npt.ArrayLike) -> Reference:
        """This reference as the baseline judges now: its reference normals' current
        scores (sorted), the threshold derived from them at 1-based `rank` (its false-
        positive rate is Beta(rank, n + 1 - rank)); the near-duplicate scale is kept."""
        s = np.asarray(scores, dtype=np.float64)
        n = len(s)
        quantiles = np.quantile(s, np.linspace(0.0, 1.0, len(self.quantiles)))
        return Reference(threshold, (float(rank), float(n + 1 - rank)), quantiles, n,
                         self.near_duplicate)


@dataclass(frozen=True, slots=True)
class Observation:
    """One scored comment as the monitor sees it."""

    similarity: float
    alerted: bool
    embedding: Floats | None = None  # kept (sampled) only when alerted
    ref: Mapping[str, Any] | None = None  # source reference, quoted in examples


@dataclass(slots=True)
class _Window:
    start: float
    index: int
    rng: np.random.Generator
    sims: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes each
    alerts: int = 0
    sample: list[tuple[Sample, Mapping[str, Any] | None]] = field(default_factory=list)
    seen_alerts: int = 0


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """The `drift` settings the monitor needs (detector.config.DriftSettings fits)."""

    window_records: int | None = 1_000
    window_s: float | None = 3_600.0
    false_alarm_budget: float = 0.01
    budget_windows: int = 1_000
    max_keys: int = 100
    sample_size: int = 200

    @property
    def alpha(self) -> float:
        return self.false_alarm_budget / (2 * self.budget_windows)


@dataclass(slots=True)
class _Stream:
    """One stream's open window (None between windows) and the next window's index."""

    window: _Window | None = None
    next_index: int = 0


class DriftMonitor:
    """Windows per stream (global and up to `max_keys` keys); emits drift event dicts."""

    def __init__(self, reference: Reference, config: DriftConfig, *, seed: int = 0,
                 key_references: Mapping[str, Reference] | None = None,
                 live: Callable[[str | None, Reference], Reference | None] | None = None
                 ) -> None:
        """`live(key, reference)`, when given, returns the reference re-scored by the
        baseline that judges the stream now (None: use `reference` as stored), so a
        window is compared like with like while the baselines learn."""
        self.config = config
        self.live = live
        self.reference = reference
        self.key_references = dict(key_references or {})
        self.seed = seed
        self.windows_closed = 0
        self.events = 0
        self.keys_evicted = 0
        self._global = _Stream()
        self._keys: OrderedDict[str, _Stream] = OrderedDict()

    def adopt(self, reference: Reference,
              key_references: Mapping[str, Reference] | None = None) -> int:
        """Compare with a new calibration from now on. Open windows mixed the old
        threshold with the new one, so they are dropped untested; returns how many."""
        streams = [self._global, *self._keys.values()]
        dropped = sum(stream.window is not None for stream in streams)
        for stream in streams:
            stream.window = None
        self.reference = reference
        self.key_references = dict(key_references or {})
        return dropped

    def observe(self, key: str | None, obs: Observation, now: float) -> list[dict[str, Any]]:
        """Add one scored comment to the global stream (and its key's); the events of any
        window this closes."""
        events = self._add(GLOBAL, self._global, obs, now)
        if key is not None and self.config.max_keys > 0:
            events += self._add(key, self._key_stream(key), obs, now)
        return events

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Close every window older than `window_s` (call on a timer when traffic is idle)."""
        events: list[dict[str, Any]] = []
        if self.config.window_s is None:
            return events
        streams: list[tuple[str | None, _Stream]] = [(GLOBAL, self._global),
                                                     *self._keys.items()]
        for key, stream in streams:
            if stream.window is not None and now - stream.window.start >= self.config.window_s:
                events += self._close(key, stream, now, "time")
        return events

    def _add(self, key: str | None, stream: _Stream, obs: Observation, now: float
             ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if (stream.window is not None and self.config.window_s is not None
                and now - stream.window.start >= self.config.window_s):
            events += self._close(key, stream, now, "time")
        if stream.window is None:
            tag = 0 if key is None else zlib.crc32(key.encode()) + 1
            rng = np.random.default_rng([self.seed, stream.next_index, tag])
            stream.window = _Window(now, stream.next_index, rng)
            stream.next_index += 1
        window = stream.window
        window.sims.append(obs.similarity)
        if obs.alerted:
            window.alerts += 1
            self._sample(window, obs)
        if self.config.window_records is not None and \
                len(window.sims) >= self.config.window_records:
            events += self._close(key, stream, now, "records")
        return events

    def _key_stream(self, key: str) -> _Stream:
        """The key's stream, most recently seen; the least recently seen are evicted."""
        stream = self._keys.get(key)
        if stream is None:
            stream = self._keys[key] = _Stream()
            while len(self._keys) > self.config.max_keys:
                self._keys.popitem(last=False)
                self.keys_evicted += 1
        else:
            self._keys.move_to_end(key)
        return stream

    def _sample(self, window: _Window, obs: Observation) -> None:
        """Uniform reservoir (algorithm R) of the alerted comments' embeddings."""
        if obs.embedding is None:
            return
        window.seen_alerts += 1
        item = (np.asarray(obs.embedding, dtype=np.float32), obs.ref)  # half the memory
        if len(window.sample) < self.config.sample_size:
            window.sample.append(item)
            return
        j = int(window.rng.integers(window.seen_alerts))
        if j < self.config.sample_size:
            window.sample[j] = item

    def _close(self, key: str | None, stream: _Stream, now: float, closed_by: str
               ) -> list[dict[str, Any]]:
        window = stream.window
        assert window is not None
        stream.window = None
        self.windows_closed += 1
        reference = self.reference if key is None else \
            self.key_references.get(key, self.reference)
        if self.live is not None:
            reference = self.live(key, reference) or reference
        if closed_by == "time" and self.config.window_s is not None:
            now = window.start + self.config.window_s
        event = evaluate(window_summary(window, now, closed_by), reference, self.config.alpha,
                         key)
        if event is None:
            return []
        self.events += 1
        return [event]


def window_summary(window: _Window, end: float, closed_by: str) -> dict[str, Any]:
    return {"index": window.index, "start": window.start, "end": end, "closed_by": closed_by,
            "sims": np.asarray(window.sims, dtype=np.float64), "alerts": window.alerts,
            "sample": window.sample}


def evaluate(summary: Mapping[str, Any], reference: Reference, alpha: float,
             key: str | None) -> dict[str, Any] | None:
    """The drift event of one closed window, or None when neither test rejects."""
    sims: Floats = summary["sims"]
    n, alerts = len(sims), int(summary["alerts"])
    a, b = reference.alert_prior
    rate_p = beta_binomial_sf(alerts, n, a, b)
    levels = len(reference.quantiles)
    d = max(0.0, ks_below(sims, reference.quantiles) - 1.0 / (levels - 1))
    n_eff = n * reference.holdout / (n + reference.holdout)
    shift_p = min(1.0, math.exp(-2.0 * n_eff * d * d))
    moved = [name for name, p in (("alert_rate", rate_p), ("similarity", shift_p))
             if p <= alpha]
    if not moved:
        return None
    ref_q = np.interp([0.1, 0.5], np.linspace(0.0, 1.0, levels), reference.quantiles)
    win_q = np.quantile(sims, [0.1, 0.5])
    return {
        "schema": DRIFT_SCHEMA,
        "scope": "global" if key is None else "key",
        "key": key,
        "window": {"index": summary["index"], "start": summary["start"],
                   "end": summary["end"], "records": n, "closed_by": summary["closed_by"]},
        "moved": moved,
        "alert_rate": {"observed": alerts / n, "alerts": alerts,
                       "expected": reference.expected_rate, "ratio":
                       alerts / n / reference.expected_rate, "p_value": rate_p},
        "similarity": {"ks_statistic": d, "p_value": shift_p,
                       "p10": float(win_q[0]), "p10_reference": float(ref_q[0]),
                       "median": float(win_q[1]), "median_reference": float(ref_q[1])},
        "alpha": alpha,
        "threshold": reference.threshold,
        "low_scoring": classify(summary["sample"], alerts, n, reference, alpha),
    }


def classify(sample: list[tuple[Sample, Mapping[str, Any] | None]], alerts: int, n: int,
             reference: Reference, alpha: float) -> dict[str, Any]:
    """One tight cluster (a campaign) or broad (a population shift), from the sample."""
    if not sample:
        return {"classification": "broad", "sample": 0, "cluster_share": 0.0,
                "cluster_alerts": 0, "cluster_cosine": None,
                "near_duplicate_cosine": reference.near_duplicate, "examples": []}
    rows = np.stack([v.astype(np.float64) / np.linalg.norm(v) for v, _ in sample])
    gram = rows @ rows.T
    near = gram >= reference.near_duplicate
    centre = int(np.argmax(near.sum(axis=1)))
    members = np.flatnonzero(near[centre])
    share = len(members) / len(sample)
    cluster_alerts = round(share * alerts)
    a, b = reference.alert_prior
    cluster_significant = len(members) > 1 and beta_binomial_sf(cluster_alerts, n, a, b) <= alpha
    rest_significant = beta_binomial_sf(alerts - cluster_alerts, n, a, b) <= alpha
    kind: Classification = "broad"
    if cluster_significant:
        kind = "mixed" if rest_significant else "campaign"
    inner = gram[np.ix_(members, members)]
    cohesion = (float((inner.sum() - len(members)) / (len(members) * (len(members) - 1)))
                if len(members) > 1 else None)
    return {"classification": kind, "sample": len(sample), "cluster_share": share,
            "cluster_alerts": cluster_alerts, "cluster_cosine": cohesion,
            "near_duplicate_cosine": reference.near_duplicate,
            "examples": [sample[i][1] for i in members[:3] if sample[i][1] is not None]}
