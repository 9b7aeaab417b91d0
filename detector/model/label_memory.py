"""Labelled comments remembered by their embeddings, consulted before the threshold: a
comment within the near-duplicate radius of a `normal`-labelled one does not alert, one
within the radius of an `anomaly`-labelled one alerts whatever its score. Pure numpy.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Kind = Literal["normal", "anomaly"]
Rows = npt.NDArray[np.float32]


def near_duplicate_radius(pairwise_q999: float) -> float:
    """The cosine at or above which two comments are near duplicates, from the 99.9th
    percentile of pairwise cosines among normal comments of the same model."""
    return (1.0 + float(pairwise_q999)) / 2.0


def pairwise_q999(rows: npt.ArrayLike, sample: int = 1000, seed: int = 0) -> float | None:
    """The 99.9th percentile of pairwise cosines among (at most `sample` of) unit rows."""
    x = np.asarray(rows, dtype=np.float64)
    if len(x) < 2:
        return None
    if len(x) > sample:
        x = x[np.random.default_rng(seed).choice(len(x), sample, replace=False)]
    pairs = (x @ x.T)[np.triu_indices(len(x), k=1)]
    return float(np.quantile(pairs, 0.999))


@dataclass(frozen=True, slots=True)
class Match:
    """The labelled comment a new comment is a near duplicate of."""

    kind: Kind
    ident: Hashable
    similarity: float


@dataclass(frozen=True, slots=True)
class Remembered:
    ident: Hashable
    kind: Kind
    vector: Rows


class LabelMemory:
    """At most `capacity` labelled embeddings (float32), matched within `radius`."""

    def __init__(self, capacity: int, dimension: int, radius: float) -> None:
        if capacity < 1 or dimension < 1 or not -1.0 <= radius <= 1.0:
            msg = f"need capacity >= 1, dimension >= 1, radius in [-1, 1]: got {capacity}, " \
                  f"{dimension}, {radius}"
            raise ValueError(msg)
        self.capacity = capacity
        self.dimension = dimension
        self.radius = radius
        # rows 0 .. len-1 are in use (packed: a comparison costs what is remembered)
        self._rows = np.zeros((capacity, dimension), dtype=np.float32)
        self._anomaly = np.zeros(capacity, dtype=bool)
        self._idents: list[Hashable] = []  # slot -> ident
        self._slots: OrderedDict[Hashable, int] = OrderedDict()  # ident -> slot, oldest first

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, ident: Hashable) -> bool:
        return ident in self._slots

    def remember(self, ident: Hashable, kind: Kind, vector: npt.ArrayLike) -> Hashable | None:
        """Keep (or replace) the label of `ident`; returns the ident forgotten to make room."""
        row = np.asarray(vector, dtype=np.float64).reshape(-1)
        if row.shape != (self.dimension,):
            msg = f"vector has dimension {row.shape}, memory has {self.dimension}"
            raise ValueError(msg)
        norm = float(np.linalg.norm(row))
        if norm == 0.0 or not np.isfinite(norm):
            msg = "a labelled vector must be finite and non-zero"
            raise ValueError(msg)
        dropped: Hashable | None = None
        if ident in self._slots:
            self._release(ident)
        elif len(self._slots) >= self.capacity:
            dropped = next(iter(self._slots))
            self._release(dropped)
        slot = len(self._idents)
        self._idents.append(ident)
        self._slots[ident] = slot
        self._rows[slot] = row / norm
        self._anomaly[slot] = kind == "anomaly"
        return dropped

    def forget(self, ident: Hashable) -> bool:
        """Revoke the label of `ident`; whether there was one."""
        if ident not in self._slots:
            return False
        self._release(ident)
        return True

    def _release(self, ident: Hashable) -> None:
        """Drop `ident`'s row, moving the last row into its slot to keep rows packed."""
        slot = self._slots.pop(ident)
        last = len(self._idents) - 1
        if slot != last:
            moved = self._idents[last]
            self._rows[slot] = self._rows[last]
            self._anomaly[slot] = self._anomaly[last]
            self._idents[slot] = moved
            self._slots[moved] = slot  # keeps its place in the age order
        self._idents.pop()
        self._rows[last] = 0.0
        self._anomaly[last] = False

    def match(self, rows: npt.ArrayLike) -> list[Match | None]:
        """For each unit row, the nearest labelled comment within the radius, if any."""
        x = np.asarray(rows, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        n = len(self._idents)
        if not n:
            return [None] * len(x)
        sims = x @ self._rows[:n].T
        # an anomaly label wins a tie: nudge it above an equal normal one
        best = np.argmax(sims + self._anomaly[None, :n] * 1e-7, axis=1)
        out: list[Match | None] = []
        for i, slot in enumerate(best):
            similarity = float(sims[i, slot])
            if similarity < self.radius:
                out.append(None)
                continue
            kind: Kind = "anomaly" if self._anomaly[slot] else "normal"
            out.append(Match(kind, self._idents[int(slot)], similarity))
        return out

    def entries(self) -> Iterator[Remembered]:
        """Every remembered label, oldest first."""
        for ident, slot in self._slots.items():
            kind: Kind = "anomaly" if self._anomaly[slot] else "normal"
            yield Remembered(ident, kind, self._rows[slot].copy())

    def nbytes(self) -> int:
        return int(self._rows.nbytes + self._anomaly.nbytes)
