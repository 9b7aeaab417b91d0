"""Per-key baselines and exemplars across replicas: the records and how they merge.
Pure, no I/O (detector.state.store reads and writes the topic).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from detector.model.baselines import Baseline, Baselines, Contribution
from detector.model.reservoir import decode_exemplars, encode_exemplars

KEY_SCHEMA = "detector.state.key/v1"
EXEMPLARS_SCHEMA = "detector.state.exemplars/v1"
CHUNK_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose state a record is: replica, base and model it applies to."""

    replica: str
    base: str
    model: str
    dimension: int

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "base": self.base,
                "model": {"name": self.model, "dimension": self.dimension}}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Scope:
        return cls(str(body["replica"]), str(body["base"]), str(body["model"]["name"]),
                   int(body["model"]["dimension"]))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One replica's contribution to one key baseline's centroid."""

    scope: Scope
    key: str
    contribution: Contribution

    def record_key(self, name: str) -> bytes:
        return f"{name}/{self.scope.replica}/k/{self.key}".encode()

    def to_bytes(self, name: str, saved_at: str) -> bytes:
        c = self.contribution
        return orjson.dumps({"schema": KEY_SCHEMA, "name": name, **self.scope.to_json(),
                             "key": self.key, "contribution": {
                                 "sum": [float(v) for v in c.sum], "weight": c.weight,
                                 "updates": c.updates}, "saved_at": saved_at})


@dataclass(frozen=True, slots=True)
class ExemplarChunk:
    """Part of the exemplars one replica accepted into one baseline's reservoir."""

    scope: Scope
    key: str | None  # None: the global baseline
    index: int
    exemplars: list[dict[str, Any]]  # encoded (detector.model.reservoir.encode_exemplars)

    def record_key(self, name: str) -> bytes:
        return f"{name}/{self.scope.replica}/x/{self.key or ''}/{self.index}".encode()

    def to_bytes(self, name: str, saved_at: str) -> bytes:
        return orjson.dumps({"schema": EXEMPLARS_SCHEMA, "name": name,
                             **self.scope.to_json(), "key": self.key, "chunk": self.index,
                             "exemplars": self.exemplars, "saved_at": saved_at})


def parse(raw: bytes) -> KeyRecord | ExemplarChunk | None:
    """A per-key or exemplar record; None for another schema (e.g. the global record)."""
    body: dict[str, Any] = orjson.loads(raw)
    schema = body.get("schema")
    if schema == KEY_SCHEMA:
        c = body["contribution"]
        return KeyRecord(Scope.from_json(body), str(body["key"]), Contribution(
            np.asarray(c["sum"], dtype=np.float64), float(c["weight"]), int(c["updates"])))
    if schema == EXEMPLARS_SCHEMA:
        key = body.get("key")
        return ExemplarChunk(Scope.from_json(body), None if key is None else str(key),
                             int(body["chunk"]), list(body["exemplars"]))
    return None


@dataclass
class SharedBaselines:
    """This replica's view of the key baselines and reservoirs shared through the topic."""

    baselines: Baselines
    scope: Scope
    keep_text: bool = False
    applied: dict[tuple[str, str], Contribution] = field(default_factory=dict)
    chunks: dict[str | None, int] = field(default_factory=dict)  # chunks last written
    published: dict[str | None, int] = field(default_factory=dict)  # updates last written
    sent: dict[str | None, int] = field(default_factory=dict)  # reservoir.inserted then

    def __post_init__(self) -> None:
        self.baselines.when_evicted(self._forget)

    def _forget(self, baseline: Baseline) -> None:
        for replica, key in [k for k in self.applied if k[1] == baseline.key]:
            del self.applied[(replica, key)]
        self.published.pop(baseline.key, None)
        self.sent.pop(baseline.key, None)

    def restored(self, published_updates: int) -> None:
        """At start: the global contribution just restored is on the topic already."""
        self.published[None] = published_updates

    def rebase(self, base: str) -> None:
        """A new calibration was adopted: share on `base` from now on, starting afresh (no
        other replica's contribution applied, nothing of ours published)."""
        self.scope = replace(self.scope, base=base)
        for table in (self.applied, self.chunks, self.published, self.sent):
            table.clear()

    def fits(self, scope: Scope) -> bool:
        return (scope.base, scope.model, scope.dimension) == (
            self.scope.base, self.scope.model, self.scope.dimension)

    def apply(self, record: KeyRecord | ExemplarChunk, *, own: bool = False) -> bool:
        """Merge another replica's record (or, with `own`, restore ours at start)."""
        if not self.fits(record.scope) or (record.scope.replica == self.scope.replica) != own:
            return False
        if isinstance(record, ExemplarChunk):
            baseline = (self.baselines.global_ if record.key is None
                        else self.baselines.key(record.key, seen=own))
            exemplars = decode_exemplars(record.exemplars, self.scope.dimension)
            if own:
                self.chunks[record.key] = max(self.chunks.get(record.key, 0), record.index + 1)
            return baseline.reservoir.merge(exemplars) > 0
        baseline = self.baselines.key(record.key, seen=own)
        if own:
            baseline.restore(record.contribution)
            self.published[record.key] = record.contribution.updates
            return True
        slot = (record.scope.replica, record.key)
        previous = self.applied.get(slot, Contribution.zero(self.scope.dimension))
        delta = record.contribution.minus(previous)
        if delta.updates <= 0:
            return False
        baseline.centroid.merge(delta.sum, delta.weight, delta.updates)
        self.applied[slot] = record.contribution
        return True

    def changed(self) -> list[Baseline]:
        """Baselines whose own updates were not published yet."""
        return [b for b in self.baselines.all()
                if b.own.updates != self.published.get(b.key, 0)]

    def records(self, baseline: Baseline) -> list[KeyRecord | ExemplarChunk]:
        """What to publish for one baseline: its contribution (key baselines; the global
        one goes in the v2 record) and its own exemplars in chunks."""
        out: list[KeyRecord | ExemplarChunk] = []
        if baseline.key is not None:
            out.append(KeyRecord(self.scope, baseline.key, baseline.own.copy()))
        if baseline.reservoir.inserted == self.sent.get(baseline.key):
            return out  # the reservoir kept nothing new: its chunks stand
        encoded = encode_exemplars(baseline.reservoir.exemplars(origin=self.scope.replica),
                                   keep_text=self.keep_text)
        chunk: list[dict[str, Any]] = []
        size = 0
        pieces: list[list[dict[str, Any]]] = []
        for item in encoded:
            length = len(orjson.dumps(item))
            if chunk and size + length > CHUNK_BYTES:
                pieces.append(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += length
        if chunk:
            pieces.append(chunk)
        previous = self.chunks.get(baseline.key, 0)
        pieces += [[] for _ in range(previous - len(pieces))]  # empty the chunks left over
        out += [ExemplarChunk(self.scope, baseline.key, i, piece)
                for i, piece in enumerate(pieces)]
        return out

    def mark_published(self, baseline: Baseline, records: list[KeyRecord | ExemplarChunk]
                       ) -> None:
        self.published[baseline.key] = baseline.own.updates
        chunks = sum(isinstance(r, ExemplarChunk) for r in records)
        if chunks:
            self.chunks[baseline.key] = chunks
            self.sent[baseline.key] = baseline.reservoir.inserted
