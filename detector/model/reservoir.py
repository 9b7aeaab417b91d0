"""A bounded, weighted reservoir of accepted normal embeddings: pure numpy, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.io.records import Position

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Ref(Position):
    """Where an exemplar came from, with the comment's id (and text, when kept)."""

    id: str | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "partition": self.partition,
                               "offset": self.offset, "id": self.id}
        if self.text is not None:
            out["text"] = self.text
        return out

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Ref:
        return cls(str(body["topic"]), int(body["partition"]), int(body["offset"]),
                   None if body.get("id") is None else str(body["id"]), body.get("text"))


def priority(ref: Ref, weight: float = 1.0) -> float:
    """The A-Res key ``log(u) / weight``, with ``u`` a hash of the reference in (0, 1)."""
    digest = hashlib.blake2b(f"{ref.topic}\x00{ref.partition}\x00{ref.offset}".encode(),
                             digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return math.log(u) / weight


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One nearest exemplar of a scored row."""

    similarity: float
    ref: Ref


@dataclass(frozen=True, slots=True)
class Exemplar:
    """A kept item: vector, key, reference, and which replica accepted it ("" = base)."""

    vector: npt.NDArray[np.float32]
    priority: float
    ref: Ref
    origin: str = ""


class Reservoir:
    """The `capacity` highest-priority exemplars offered so far."""

    def __init__(self, capacity: int, dimension: int) -> None:
        if capacity < 1:
            msg = f"reservoir capacity must be at least 1, got {capacity}"
            raise ValueError(msg)
        self.capacity = capacity
        self.dimension = dimension
        # preallocated lazily in chunks, so that an idle key costs little
        self._vectors = np.zeros((0, dimension), dtype=np.float32)
        self._priorities = np.zeros(0, dtype=np.float64)
        self._n = 0
        self._refs: list[Ref] = []
        self._origins: list[str] = []
        self._index: set[Position] = set()
        self.inserted = 0  # exemplars kept so far (a change counter for publishing)

    def __len__(self) -> int:
        return self._n

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        return self._vectors[: self._n]

    def _grow(self) -> None:
        size = min(self.capacity, max(16, 2 * len(self._priorities)))
        vectors = np.zeros((size, self.dimension), dtype=np.float32)
        vectors[: self._n] = self._vectors[: self._n]
        priorities = np.full(size, -np.inf)
        priorities[: self._n] = self._priorities[: self._n]
        self._vectors, self._priorities = vectors, priorities

    def offer(self, vector: npt.ArrayLike, ref: Ref, *, weight: float = 1.0,
              origin: str = "", key: float | None = None) -> bool:
        """Keep the item if it ranks among the top `capacity`; True when it was kept."""
        if ref.position in self._index:
            return False
        key = priority(ref, weight) if key is None else key
        row = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if row.shape[1] != self.dimension:
            msg = f"exemplar has dimension {row.shape[1]}, reservoir {self.dimension}"
            raise ValueError(msg)
        if self._n < self.capacity:
            if self._n == len(self._priorities):
                self._grow()
            self._vectors[self._n] = row[0]
            self._priorities[self._n] = key
            self._refs.append(ref)
            self._origins.append(origin)
            self._n += 1
        else:
            low = int(np.argmin(self._priorities))
            if key <= self._priorities[low]:
                return False
            self._index.discard(self._refs[low].position)
            self._vectors[low] = row[0]
            self._priorities[low] = key
            self._refs[low] = ref
            self._origins[low] = origin
        self._index.add(ref.position)
        self.inserted += 1
        return True

    def merge(self, exemplars: list[Exemplar]) -> int:
        """Offer another reservoir's exemplars (keys kept as they are); returns how many
        were kept. Repeated merges of the same exemplars change nothing."""
        return sum(self.offer(e.vector, e.ref, origin=e.origin, key=e.priority)
                   for e in exemplars)

    def exemplars(self, origin: str | None = None) -> list[Exemplar]:
        """Kept exemplars in descending priority (only those of `origin` if given)."""
        order = np.argsort(-self._priorities[: self._n], kind="stable")
        return [Exemplar(self._vectors[i].copy(), float(self._priorities[i]), self._refs[i],
                         self._origins[i])
                for i in order if origin is None or self._origins[i] == origin]

    def similarities(self, rows: npt.ArrayLike) -> Floats:
        """Cosine of each row to every exemplar, shape (n, len(self))."""
        queries = np.asarray(rows, dtype=np.float32).reshape(-1, self.dimension)
        # exemplars @ queries walks the stored rows in memory order: about 5x faster than
        # queries @ exemplars.T for one query (bench part 11, alert explanations)
        return (self.vectors @ queries.T).T.astype(np.float64)

    def knn(self, rows: npt.ArrayLike, k: int) -> Floats:
        """Mean cosine to the k nearest exemplars (all of them when fewer); NaN if empty."""
        sims = self.similarities(rows)
        if sims.shape[1] == 0:
            return np.full(sims.shape[0], np.nan)
        k = min(k, sims.shape[1])
        # sorted, so the mean adds the same values in the same order wherever they sit
        top = np.sort(np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:], axis=1)
        out: Floats = top.mean(axis=1)
        return out

    def nearest(self, row: npt.ArrayLike, n: int = 3) -> list[Neighbour]:
        """The n nearest exemplars of one row, most similar first."""
        sims = self.similarities(row)[0]
        candidates = np.arange(len(sims))
        if len(sims) > n > 0:  # the n largest and their ties, in index order, not a full sort
            kth = np.partition(sims, len(sims) - n)[len(sims) - n]
            candidates = np.flatnonzero(sims >= kth)
        order = candidates[np.argsort(-sims[candidates], kind="stable")][:n]
        return [Neighbour(float(sims[i]), self._refs[i]) for i in order]

    def nbytes(self) -> int:
        """Memory held by vectors and keys (references not counted)."""
        return int(self._vectors.nbytes + self._priorities.nbytes)


def encode_exemplars(exemplars: list[Exemplar], *, keep_text: bool, exact: bool = False
                     ) -> list[dict[str, Any]]:
    """JSON-ready exemplars with int8-quantised vectors (`exact`: float32, 4x the size,
    for a replay's progress file, whose resumed output must equal an uninterrupted run)."""
    out = []
    for e in exemplars:
        ref = e.ref if keep_text else Ref(e.ref.topic, e.ref.partition, e.ref.offset, e.ref.id)
        item: dict[str, Any] = {"p": e.priority, "ref": ref.to_json(), "origin": e.origin}
        if exact:
            item["f"] = base64.b64encode(e.vector.astype(np.float32).tobytes()).decode("ascii")
        else:
            scale = float(np.max(np.abs(e.vector))) / 127 or 1.0
            q = np.round(e.vector / scale).astype(np.int8)
            item |= {"v": base64.b64encode(q.tobytes()).decode("ascii"), "s": scale}
        out.append(item)
    return out


def decode_exemplars(items: list[dict[str, Any]], dimension: int) -> list[Exemplar]:
    """The inverse of `encode_exemplars` (vectors re-normalised to unit length)."""
    out = []
    for item in items:
        if "f" in item:
            exact = np.frombuffer(base64.b64decode(item["f"]), dtype=np.float32)
            if exact.shape != (dimension,):
                msg = f"exemplar has {exact.shape[0]} dimensions, expected {dimension}"
                raise ValueError(msg)
            out.append(Exemplar(exact.copy(), float(item["p"]), Ref.from_json(item["ref"]),
                                str(item.get("origin", ""))))
            continue
        q = np.frombuffer(base64.b64decode(item["v"]), dtype=np.int8)
        if q.shape != (dimension,):
            msg = f"exemplar has {q.shape[0]} dimensions, expected {dimension}"
            raise ValueError(msg)
        v = q.astype(np.float32) * np.float32(item["s"])
        norm = float(np.linalg.norm(v))
        out.append(Exemplar(v / norm if norm > 0 else v, float(item["p"]),
                            Ref.from_json(item["ref"]), str(item.get("origin", ""))))
    return out
