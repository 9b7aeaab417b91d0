"""Labelled comments shared across replicas: the memory records of the state topic and
the memory they keep in step. Pure, no I/O (detector.state.store reads and writes).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from detector.io.records import Position
from detector.model.label_memory import Kind, LabelMemory

LABEL_SCHEMA = "detector.state.label/v1"
MARK = "@label"


def record_key(name: str, source: Position) -> bytes:
    return f"{name}/{MARK}/{source.topic}/{source.partition}/{source.offset}".encode()


def source_of_key(name: str, key: bytes) -> Position | None:
    """The labelled comment a record key names (None: not a label record's key)."""
    prefix = f"{name}/{MARK}/".encode()
    if not key.startswith(prefix):
        return None
    try:
        topic, partition, offset = key[len(prefix):].decode().rsplit("/", 2)
        return Position(topic, int(partition), int(offset))
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """One labelled comment's vector and label, as one replica resolved it."""

    source: Position
    kind: Kind
    vector: npt.NDArray[np.float32]
    replica: str
    model: str
    labeller: str | None = None

    def to_bytes(self, name: str, saved_at: str) -> bytes:
        raw = np.asarray(self.vector, dtype="<f4").tobytes()
        return orjson.dumps({
            "schema": LABEL_SCHEMA, "name": name, "replica": self.replica,
            "model": {"name": self.model, "dimension": len(self.vector)},
            "kind": self.kind, "source": {"topic": self.source.topic,
                                          "partition": self.source.partition,
                                          "offset": self.source.offset},
            "vector": base64.b64encode(raw).decode(), "labeller": self.labeller,
            "saved_at": saved_at})

    @classmethod
    def from_bytes(cls, raw: bytes) -> LabelRecord:
        body: dict[str, Any] = orjson.loads(raw)
        if body.get("schema") != LABEL_SCHEMA:
            msg = f"not a {LABEL_SCHEMA} record"
            raise ValueError(msg)
        kind = body["kind"]
        if kind not in ("normal", "anomaly"):
            msg = f"label kind {kind!r}"
            raise ValueError(msg)
        vector = np.frombuffer(base64.b64decode(body["vector"]), dtype="<f4")
        if len(vector) != int(body["model"]["dimension"]):
            msg = "vector length differs from the model's dimension"
            raise ValueError(msg)
        s = body["source"]
        labeller = body.get("labeller")
        return cls(Position(str(s["topic"]), int(s["partition"]), int(s["offset"])), kind,
                   vector.astype(np.float32), str(body["replica"]),
                   str(body["model"]["name"]), None if labeller is None else str(labeller))


def is_label_record(raw: bytes) -> bool:
    """Whether a state value is a label record (cheap: no full parse)."""
    return LABEL_SCHEMA.encode() in raw[:100]


@dataclass
class SharedLabels:
    """This replica's label memory and the records it owes the state topic (`sharing`:
    queued for the state sync; otherwise none)."""

    memory: LabelMemory
    replica: str
    model: str
    sharing: bool = False
    pending: dict[Position, LabelRecord | None] = field(default_factory=dict)
    _tombstones: Counter[Position] = field(default_factory=Counter)

    def remember(self, source: Position, kind: Kind, vector: npt.ArrayLike,
                 labeller: str | None = None) -> None:
        """A label this replica resolved: remember it and queue its record."""
        unit = np.asarray(vector, dtype=np.float64).reshape(-1)
        unit = unit / np.linalg.norm(unit)
        self.memory.remember(source, kind, unit)
        if self.sharing:
            self.pending[source] = LabelRecord(source, kind, unit.astype(np.float32),
                                               self.replica, self.model, labeller)

    def forget(self, source: Position) -> bool:
        """A revoke this replica resolved: forget the label and queue its tombstone."""
        if self.sharing:
            self.pending[source] = None
        return self.memory.forget(source)

    def take(self) -> list[tuple[Position, LabelRecord | None]]:
        """The records to publish now (the queue empties; tombstones are expected back)."""
        out = list(self.pending.items())
        self.pending.clear()
        for source, record in out:
            if record is None:
                self._tombstones[source] += 1
        return out

    def requeue(self, records: list[tuple[Position, LabelRecord | None]]) -> None:
        """Records whose publish failed: queued again unless a newer one was queued."""
        for source, record in records:
            if record is None:
                self._tombstones[source] -= 1
            self.pending.setdefault(source, record)

    def apply(self, source: Position, raw: bytes | None, *, restoring: bool = False) -> bool:
        """A record read from the state topic (None: a tombstone); `restoring` at start,
        when this replica's own records count too. Returns whether the memory changed."""
        if raw is None:
            if not restoring and self._tombstones[source] > 0:
                self._tombstones[source] -= 1
                return False
            return self.memory.forget(source)
        record = LabelRecord.from_bytes(raw)
        if record.model != self.model or len(record.vector) != self.memory.dimension:
            return False
        if record.replica == self.replica and not restoring:
            return False  # applied when it was resolved
        self.memory.remember(record.source, record.kind, record.vector)
        return True
