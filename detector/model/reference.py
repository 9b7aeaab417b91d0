"""A baseline's reference normals: held-out comments that never teach, re-scored against
the baseline as it is now to give its threshold and admission gate on the model's own
scale. Pure numpy, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Rows = npt.NDArray[np.float32]


def binomial_cdf(n: int, p: float, upto: int | None = None) -> Floats:
    """P(Binomial(n, p) <= j) for j = 0 .. `upto` (default n)."""
    top = n if upto is None else max(0, min(n, upto))
    j = np.arange(1, top + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - j + 1) - np.log(j))])
    counts = np.arange(top + 1, dtype=np.float64)
    log_pmf = log_choose + counts * math.log(p) + (n - counts) * math.log1p(-p)
    cdf: Floats = np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)
    return cdf


@functools.lru_cache(maxsize=1024)
def rank(n: int, target: float, confidence: float) -> int | None:
    """The largest 1-based rank k whose order statistic, as a threshold, has a
    false-positive rate above `target` with probability at most 1 - `confidence`; None
    when even the smallest score cannot promise that (too few reference normals)."""
    if n < 1:
        return None
    # cdf[k - 1] = P(FPR of the k-th smallest > target); the largest rank with it at most
    # 1 - confidence lies below the mean plus ten standard deviations
    upto = math.ceil(n * target + 10.0 * math.sqrt(n * target * (1.0 - target)) + 10.0)
    cdf = binomial_cdf(n, target, min(upto, n - 1))
    ok = np.flatnonzero(cdf <= 1.0 - confidence + 1e-12)
    return int(ok[-1]) + 1 if len(ok) else None


@functools.lru_cache(maxsize=1024)
def fpr_interval(n: int, k: int, level: float = 0.9) -> tuple[float, float]:
    """Central `level` interval of the false-positive rate of the k-th smallest of n
    reference scores: quantiles of Beta(k, n + 1 - k), found by bisection on
    P(Beta <= x) = P(Binomial(n, x) >= k)."""
    tail = (1.0 - level) / 2.0

    def beta_cdf(x: float) -> float:
        return float(1.0 - binomial_cdf(n, x, k - 1)[k - 1])

    def solve(goal: float) -> float:
        low, high = 0.0, 1.0
        for _ in range(60):
            mid = (low + high) / 2.0
            if beta_cdf(mid) < goal:
                low = mid
            else:
                high = mid
        return (low + high) / 2.0

    return solve(tail), solve(1.0 - tail)


@dataclass(frozen=True, slots=True)
class Sample:
    """A baseline's reference normals: unit rows that never teach it. `in_centroid`: the
    rows are part of the base centroid with weight 1 each (the seed file), so each is
    scored leave-one-out."""

    rows: Rows
    in_centroid: bool = False

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Derived:
    """A threshold derived from reference scores, and what it promises."""

    threshold: float
    gate: float  # a comment teaches its baseline only when it scores at least this
    rank: int
    reference: int  # n
    expected_fpr: float  # k / (n + 1)
    fpr_low: float
    fpr_high: float
    scores: Floats = field(compare=False, repr=False)  # the reference scores, sorted


def derive(scores: npt.ArrayLike, target: float, confidence: float,
           admit_quantile: float) -> Derived | None:
    """Threshold at the conservative rank and the admission gate at `admit_quantile` of
    the reference scores (never below the threshold); None when the reference is too
    small for the target at this confidence."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    k = rank(n, target, confidence)
    if k is None:
        return None
    threshold = float(s[k - 1])
    gate = max(threshold, float(np.quantile(s, admit_quantile)))
    low, high = fpr_interval(n, k)
    return Derived(threshold, gate, k, n, k / (n + 1), low, high, s)


def supports(n: int, target: float, confidence: float) -> bool:
    """Whether n reference normals support a threshold of their own for `target`: n is at
    least `min_support`."""
    return n >= min_support(target, confidence)


@functools.lru_cache(maxsize=64)
def min_support(target: float, confidence: float) -> int:
    """The fewest reference normals from which on a rank exists at this confidence and
    its expected false-positive rate is at least half the target, for every larger count
    too (the rank steps, so the condition alone is not monotonic in n)."""
    last_failure = 0
    for n in range(1, math.ceil(20.0 / target) + 1):
        k = rank(n, target, confidence)
        if k is None or k / (n + 1) < target / 2.0:
            last_failure = n
    return last_failure + 1


def leave_one_out(rows: npt.ArrayLike, total: npt.ArrayLike) -> Floats:
    """Each unit row's cosine to `total` (a centroid sum that includes the row once with
    weight 1) with the row taken out: reference rows that are part of the centroid (the
    seed file) do not judge themselves."""
    x = np.asarray(rows, dtype=np.float64)
    rest = np.asarray(total, dtype=np.float64)[None, :] - x
    norms = np.linalg.norm(rest, axis=1)
    dots = np.einsum("ij,ij->i", x, rest)
    out: Floats = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return out


def encode_rows(rows: npt.ArrayLike) -> str:
    """Unit rows as base64 float16 (the artifact's compact form: 2 bytes a dimension)."""
    import base64

    return base64.b64encode(np.asarray(rows, dtype="<f2").tobytes()).decode("ascii")


def decode_rows(text: str, dimension: int) -> Rows:
    """Rows from `encode_rows`, as float32, renormalised (float16 rounding)."""
    import base64

    flat = np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)
    if dimension <= 0 or flat.size % dimension:
        msg = f"reference rows do not divide into dimension {dimension}"
        raise ValueError(msg)
    rows = flat.reshape(-1, dimension)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return out
