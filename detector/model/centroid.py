"""The centroid of normal comments: a mergeable weighted sum, pure numpy, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]


@dataclass(slots=True)
class Centroid:
    """Mergeable centroid state; `version` counts updates since it was created."""

    sum: Vector
    weight: float = 0.0
    version: int = 0
    decay: float = 1.0
    _unit: Vector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sum = np.asarray(self.sum, dtype=np.float64).copy()
        if self.sum.ndim != 1:
            msg = f"centroid sum must be a vector, got shape {self.sum.shape}"
            raise ValueError(msg)
        if not 0.0 < self.decay <= 1.0:
            msg = f"decay must be in (0, 1], got {self.decay}"
            raise ValueError(msg)
        self._refresh()

    @classmethod
    def empty(cls, dimension: int, decay: float = 1.0) -> Centroid:
        return cls(np.zeros(dimension), 0.0, 0, decay)

    @classmethod
    def from_vectors(cls, vectors: npt.ArrayLike, decay: float = 1.0) -> Centroid:
        """The plain mean of unit rows (decay only applies to later updates)."""
        rows = np.asarray(vectors, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            msg = "need a non-empty (n, d) array of vectors to seed a centroid"
            raise ValueError(msg)
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return cls(rows.sum(axis=0), float(rows.shape[0]), 0, decay)

    @property
    def dimension(self) -> int:
        return int(self.sum.shape[0])

    @property
    def vector(self) -> Vector:
        """The unit centroid direction (zeros while empty)."""
        return self._unit

    def _refresh(self) -> None:
        norm = float(np.linalg.norm(self.sum))
        self._unit = self.sum / norm if norm > 0 else np.zeros_like(self.sum)

    def similarity(self, vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Cosine similarity of unit rows to the centroid, without updating it."""
        return np.asarray(vectors, dtype=np.float64) @ self._unit

    def add(self, x: npt.ArrayLike) -> None:
        """Accept one unit vector into the centroid."""
        self.sum *= self.decay
        self.sum += np.asarray(x, dtype=np.float64)
        self.weight = self.weight * self.decay + 1.0
        self.version += 1
        self._refresh()

    def merge(self, increment_sum: npt.ArrayLike, increment_weight: float, updates: int = 1
              ) -> None:
        """Add a replica's increment to S and w; `updates` is how many updates it holds."""
        inc = np.asarray(increment_sum, dtype=np.float64)
        if inc.shape != self.sum.shape:
            msg = f"increment has dimension {inc.shape}, centroid {self.sum.shape}"
            raise ValueError(msg)
        self.sum += inc
        self.weight += float(increment_weight)
        self.version += updates
        self._refresh()

    def assign(self, other: Centroid) -> None:
        """Become a copy of `other` in place (its holders see the new state); the decay
        stays this centroid's."""
        self.sum = other.sum.copy()
        self.weight = other.weight
        self.version = other.version
        self._refresh()

    def copy(self, decay: float | None = None) -> Centroid:
        """An independent copy, with another `decay` when given."""
        return Centroid(self.sum.copy(), self.weight, self.version,
                        self.decay if decay is None else decay)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; floats survive a round trip exactly (repr precision)."""
        return {
            "dimension": self.dimension,
            "sum": [float(v) for v in self.sum],
            "weight": self.weight,
            "version": self.version,
            "decay": self.decay,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], decay: float | None = None) -> Centroid:
        """The centroid `to_dict` wrote; with `decay`, that decay instead of the stored one."""
        total = np.asarray(data["sum"], dtype=np.float64)
        if total.shape != (int(data["dimension"]),):
            msg = "centroid sum length does not match its dimension"
            raise ValueError(msg)
        stored = cls(total, float(data["weight"]), int(data["version"]), float(data["decay"]))
        return stored if decay is None else stored.copy(decay)
