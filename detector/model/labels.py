"""Operator feedback: label records, the cache that finds a labelled alert's embedding,
and what a label does to the centroid. Pure: no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from detector.io.records import Position
from detector.model.centroid import Centroid

FEEDBACK_SCHEMA = "detector.feedback/v1"
MAX_LABEL_BYTES = 64 * 1024
MAX_FIELD_CHARS = 256  # ids, labellers, topics
Floats = npt.NDArray[np.float64]
LabelValue = Literal["normal", "anomaly", "revoke"]
Outcome = Literal["taught", "untaught", "excluded", "unchanged", "unresolved", "revoked"]


def text_hash(text: str) -> str:
    """What the alert cache keeps of a comment's text, to check a label's ``text``."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Label:
    """A valid operator label."""

    source: Position | None
    id: str | None
    label: LabelValue
    text: str | None = None
    labeller: str | None = None
    time: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A label record that cannot be used, and why (the dead-letter reason)."""

    reason: str  # missing_value | too_large | invalid_utf8 | invalid_json | wrong_schema
    #              | missing_target | invalid_label | invalid_field
    error: str


def parse_label(raw: bytes | None, max_bytes: int = MAX_LABEL_BYTES) -> Label | Rejected:
    """Validate one label record's value."""
    if raw is None:
        return Rejected("missing_value", "record has no value (tombstone)")
    if len(raw) > max_bytes:
        return Rejected("too_large", f"value is {len(raw)} bytes, limit {max_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        return Rejected(reason, f"value is not JSON: {exc}")
    if not isinstance(body, dict):
        return Rejected("invalid_json", f"value is JSON {type(body).__name__}, not an object")
    if body.get("schema") != FEEDBACK_SCHEMA:
        return Rejected("wrong_schema", f"schema is {body.get('schema')!r}, "
                        f"expected {FEEDBACK_SCHEMA!r}")
    unknown = sorted(set(body) - {"schema", "source", "id", "label", "text", "labeller",
                                  "time"})
    if unknown:
        return Rejected("invalid_field", f"unknown fields {unknown}")
    label = body.get("label")
    if label not in ("normal", "anomaly", "revoke"):
        return Rejected("invalid_label", f"label is {label!r}, expected 'normal', 'anomaly' "
                        "or 'revoke'")
    try:
        source = _source(body.get("source"))
        comment_id = _short_text(body, "id", number_ok=True)
        text = body.get("text")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise _FieldError("text must be a non-empty string")
        labeller = _short_text(body, "labeller")
        time = _time(body.get("time"))
    except _FieldError as exc:
        return Rejected("invalid_field", str(exc))
    if source is None and comment_id is None:
        return Rejected("missing_target", "a label needs source {topic, partition, offset} "
                        "or id")
    return Label(source, comment_id, label, text, labeller, time)


class _FieldError(ValueError):
    pass


def _source(value: object) -> Position | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"topic", "partition", "offset"}:
        msg = "source must be an object with exactly topic, partition and offset"
        raise _FieldError(msg)
    topic, partition, offset = value["topic"], value["partition"], value["offset"]
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_FIELD_CHARS:
        msg = "source.topic must be a non-empty string"
        raise _FieldError(msg)
    for name, number in (("partition", partition), ("offset", offset)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            msg = f"source.{name} must be a non-negative integer"
            raise _FieldError(msg)
    return Position(topic, partition, offset)


def _short_text(body: dict[str, Any], name: str, *, number_ok: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if number_ok and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS:
        msg = f"{name} must be a string of 1-{MAX_FIELD_CHARS} characters"
        raise _FieldError(msg)
    return value


def _time(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        msg = "time must be an ISO 8601 string"
        raise _FieldError(msg)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        msg = f"time {value[:40]!r} is not ISO 8601"
        raise _FieldError(msg) from None
    return value


@dataclass(frozen=True, slots=True)
class CachedAlert:
    """What the daemon remembers of an alert it published."""

    source: Position
    id: str | None
    embedding: npt.NDArray[np.floating[Any]]
    similarity: float
    key: str | None = None
    text_hash: str | None = None  # of the comment's text (`text_hash`), to check labels

    def matches(self, text: str) -> bool:
        """Whether a label's `text` is this alert's comment (True when no hash is kept)."""
        return self.text_hash is None or self.text_hash == text_hash(text)


class AlertCache:
    """The most recent `capacity` alerts, found by source or by id."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            msg = f"alert cache capacity must be at least 1, got {capacity}"
            raise ValueError(msg)
        self.capacity = capacity
        self.evictions = 0
        self._by_source: OrderedDict[Position, CachedAlert] = OrderedDict()
        self._by_id: dict[str, Position] = {}

    def __len__(self) -> int:
        return len(self._by_source)

    def remember(self, alert: CachedAlert) -> None:
        """Keep an alert (its embedding as float32: 2 KB at 512 dimensions)."""
        alert = replace(alert, embedding=np.asarray(alert.embedding, dtype=np.float32))
        self._by_source[alert.source] = alert
        self._by_source.move_to_end(alert.source)
        if alert.id is not None:
            self._by_id[alert.id] = alert.source
        while len(self._by_source) > self.capacity:
            _, old = self._by_source.popitem(last=False)
            if old.id is not None and self._by_id.get(old.id) == old.source:
                del self._by_id[old.id]
            self.evictions += 1

    def find(self, label: Label) -> CachedAlert | None:
        """The labelled alert: by source when the label names one, else by id."""
        if label.source is not None:
            return self._by_source.get(label.source)
        if label.id is not None:
            source = self._by_id.get(label.id)
            return None if source is None else self._by_source.get(source)
        return None


@dataclass(slots=True)
class _Entry:
    label: LabelValue
    taught: bool  # a normal label added the comment to the centroid
    alert: bool  # the comment was a cached alert (counts towards precision)


@dataclass(slots=True)
class Precision:
    """Labels of known alerts: anomaly = a true alert, normal = a false one."""

    true_alerts: int = 0
    false_alerts: int = 0
    unresolved: int = 0  # labels whose comment was not found and carried no text

    @property
    def value(self) -> float:
        labelled = self.true_alerts + self.false_alerts
        return self.true_alerts / labelled if labelled else math.nan


class LabelBook:
    """The latest label per comment (at most `max_labels`), applied to a centroid; the
    last `undo_capacity` teachings can be undone by an `anomaly` label (2 KB each at 512
    dimensions)."""

    def __init__(self, weight: float, max_labels: int, undo_capacity: int = 10_000) -> None:
        if weight <= 0 or max_labels < 1 or undo_capacity < 0:
            msg = (f"need weight > 0, max_labels >= 1 and undo_capacity >= 0, got {weight}, "
                   f"{max_labels}, {undo_capacity}")
            raise ValueError(msg)
        self.weight = weight
        self.max_labels = max_labels
        self.undo_capacity = undo_capacity
        self.undo_missed = 0
        # the unit vectors of the most recent normal labels (float32), to undo them
        self._undo: OrderedDict[tuple[Any, ...], npt.NDArray[np.float32]] = OrderedDict()
        self.precision = Precision()
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()

    def apply(self, label: Label, centroid: Centroid, *, alert: CachedAlert | None = None,
              embedding: Floats | None = None) -> Outcome:
        """Apply one label. `alert` is the cache's match; without one, `embedding` (of the
        label's text) lets a `normal` label teach."""
        item = _identity(label, alert)
        vector = alert.embedding if alert is not None else embedding
        previous = self._entries.get(item)
        if label.label == "revoke":
            return self._revoke(item, previous, centroid)
        if previous is not None and previous.label == label.label:
            return "unchanged"
        if label.label == "normal" and vector is None:
            self.precision.unresolved += 1
            return "unresolved"
        if previous is not None and previous.alert:
            self._count(previous.label, -1)
        is_alert = alert is not None or (previous is not None and previous.alert)
        if is_alert:
            self._count(label.label, +1)
        outcome: Outcome
        taught = False
        if label.label == "anomaly":
            outcome = "excluded"
            vector_taught = self._undo.pop(item, None) if previous is not None else None
            if vector_taught is not None:
                centroid.merge(-self.weight * vector_taught.astype(np.float64), -self.weight)
                outcome = "untaught"
            elif previous is not None and previous.taught:
                self.undo_missed += 1  # taught too long ago: its increment stays
        else:
            unit = np.asarray(vector, dtype=np.float64)
            stored = (unit / np.linalg.norm(unit)).astype(np.float32)
            centroid.merge(self.weight * stored.astype(np.float64), self.weight)
            self._undo[item] = stored
            while len(self._undo) > self.undo_capacity:
                self._undo.popitem(last=False)
            taught, outcome = True, "taught"
        self._entries[item] = _Entry(label.label, taught, is_alert)
        self._entries.move_to_end(item)
        while len(self._entries) > self.max_labels:
            self._entries.popitem(last=False)
        return outcome

    def __len__(self) -> int:
        return len(self._entries)

    def _revoke(self, item: tuple[Any, ...], previous: _Entry | None,
                centroid: Centroid) -> Outcome:
        """Forget the comment's label: its precision count, and its teaching while it can
        still be undone."""
        if previous is None:
            return "revoked"
        del self._entries[item]
        if previous.alert:
            self._count(previous.label, -1)
        taught = self._undo.pop(item, None)
        if taught is not None:
            centroid.merge(-self.weight * taught.astype(np.float64), -self.weight)
        elif previous.taught:
            self.undo_missed += 1
        return "revoked"

    def _count(self, label: LabelValue, step: int) -> None:
        if label == "anomaly":
            self.precision.true_alerts += step
        else:
            self.precision.false_alerts += step


def _identity(label: Label, alert: CachedAlert | None) -> tuple[Any, ...]:
    """One key per comment: its source when known (from the label or the cache), else id."""
    source = alert.source if alert is not None else label.source
    if source is not None:
        return ("source", *source.astuple())
    return ("id", label.id)
