"""The threshold of a start from the seed file when no calibration artifact is given: one
that fits the model, derived from the seed samples themselves.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import structlog

from detector.calibration.stats import min_holdout, threshold_at_fpr
from detector.config import ScoringSettings
from detector.errors import ConfigError

log = structlog.get_logger("detector.calibration.seed")
# where the starting global threshold came from (the seed is the one decided here)
ThresholdOrigin = Literal["calibration", "seed", "fixed"]

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SeedThreshold:
    """The seed-derived threshold, its confidence interval and the LOO similarity range."""

    threshold: float
    ci_low: float | None
    ci_high: float | None
    level: float
    target_fpr: float
    samples: int
    loo_min: float
    loo_max: float

    @property
    def precise(self) -> bool:
        """Enough samples for the target rate to mean something (3 expected below it)."""
        return self.samples >= min_holdout(self.target_fpr)

    def log_fields(self) -> dict[str, object]:
        return {"threshold": round(self.threshold, 4),
                "ci_low": None if self.ci_low is None else round(self.ci_low, 4),
                "ci_high": None if self.ci_high is None else round(self.ci_high, 4),
                "ci_level": self.level, "target_fpr": self.target_fpr,
                "seed_samples": self.samples, "loo_min": round(self.loo_min, 4),
                "loo_max": round(self.loo_max, 4)}


def loo_similarities(rows: npt.ArrayLike) -> Floats:
    """Each unit row's cosine similarity to the mean direction of all the other rows."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        msg = "leave-one-out similarities need at least 2 rows"
        raise ValueError(msg)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rest = x.sum(axis=0) - x  # row i: the sum of every other row
    norms = np.linalg.norm(rest, axis=1)
    dots = np.einsum("ij,ij->i", x, rest)
    sims: Floats = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return sims


def quantile_ci(sorted_sims: Floats, q: float, level: float = 0.95
                ) -> tuple[float | None, float | None]:
    """Distribution-free interval of the q-quantile from order statistics."""
    n = len(sorted_sims)
    k = np.arange(n + 1)
    log_pmf = (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) for i in k])
               - np.array([math.lgamma(n - i + 1) for i in k])
               + k * math.log(q) + (n - k) * math.log1p(-q))
    cdf = np.cumsum(np.exp(log_pmf))  # cdf[j] = P(B <= j)
    tail = (1 - level) / 2
    # lower: the r-th smallest (1-based) with P(B < r) = cdf[r-1] <= tail, r as large as can be
    low_ranks = np.flatnonzero(cdf[:n] <= tail)  # index j = r - 1
    low = float(sorted_sims[int(low_ranks[-1])]) if len(low_ranks) else None
    # upper: the s-th smallest with P(B >= s) = 1 - cdf[s-1] <= tail, s as small as can be
    high_ranks = np.flatnonzero(1 - cdf[:n] <= tail)
    high = float(sorted_sims[int(high_ranks[0])]) if len(high_ranks) else None
    return low, high


def seed_threshold(rows: npt.ArrayLike, target_fpr: float, level: float = 0.95
                   ) -> SeedThreshold:
    """The `target_fpr` quantile of the seed's leave-one-out similarities, with its CI."""
    sims = np.sort(loo_similarities(rows))
    low, high = quantile_ci(sims, target_fpr, level)
    return SeedThreshold(threshold=threshold_at_fpr(sims, target_fpr), ci_low=low,
                         ci_high=high, level=level, target_fpr=target_fpr,
                         samples=len(sims), loo_min=float(sims[0]), loo_max=float(sims[-1]))


def fixed_threshold_problem(threshold: float, seed: SeedThreshold) -> str | None:
    """Why a configured fixed threshold does not fit this model's seed similarities."""
    if threshold < seed.loo_min:
        return (f"scoring.threshold {threshold:g} is below every seed text's similarity "
                f"to the others ({seed.loo_min:.3f}..{seed.loo_max:.3f}): comments as "
                f"unusual as the least typical seed text will not alert, so few or no "
                f"anomalies will")
    if threshold > seed.loo_max:
        return (f"scoring.threshold {threshold:g} is above every seed text's similarity "
                f"to the others ({seed.loo_min:.3f}..{seed.loo_max:.3f}): nearly every "
                f"comment will alert")
    return None


def seed_decision(rows: npt.NDArray[np.float32], path: Path, scoring: ScoringSettings,
                  model: str) -> tuple[float, ThresholdOrigin]:
    """The threshold a seed start uses and where it came from: with ``scoring.threshold:
    auto`` derived from the embedded seed's leave-one-out similarities, else the configured
    number, checked against them (a warning when it does not fit)."""
    if len(rows) < 2:
        if scoring.threshold == "auto":
            msg = (f"seed file {path} holds {len(rows)} comment: scoring.threshold auto needs "
                   f"at least 2 (better {min_holdout(scoring.target_fpr)})")
            raise ConfigError(msg)
        return scoring.threshold, "fixed"
    derived = seed_threshold(rows, scoring.target_fpr)
    if scoring.threshold != "auto":
        problem = fixed_threshold_problem(scoring.threshold, derived)
        if problem is not None:
            log.warning(problem + "; set scoring.threshold: auto or run `detector calibrate`",
                        seed_derived=round(derived.threshold, 4), model=model)
        return scoring.threshold, "fixed"
    log.info("threshold derived from the seed (leave-one-out); not calibrated on your "
             "traffic", **derived.log_fields(), model=model)
    if not derived.precise:
        log.warning("the seed file is too small for scoring.target_fpr: the seed-derived "
                    "threshold is imprecise", seed_samples=derived.samples,
                    needed=min_holdout(scoring.target_fpr), target_fpr=scoring.target_fpr)
    return derived.threshold, "seed"
