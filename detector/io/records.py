"""Records in and out: decode a Kafka record into a `Comment` or a `DeadLetter`, and
encode scores and dead letters as JSON (alerts: detector.model.alerts). Pure functions,
no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from detector.config import InputSettings
from detector.io.invisible import has_visible, visible
from detector.io.jsondoc import JsonRefusedError, parse

SCORE_SCHEMA = "detector.score/v1"
DEAD_LETTER_SCHEMA = "detector.dead-letter/v1"
# A dead letter carries the original value whole up to this size: every record the default
# `input.max_bytes` (256 KiB) admits. Base64 grows it by a third, to 683 KiB, under the
# broker's default ~1 MB message limit; beyond it the first 512 KiB are kept, with the
# original's size and SHA-256, and the source offset finds the rest.
MAX_DEAD_LETTER_VALUE = 512 * 1024

Message = tuple[str, bytes | None, bytes]  # an output to publish: topic, key, value

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class KafkaRecord(Protocol):
    """What we read from an aiokafka `ConsumerRecord`."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record sits: topic, partition, offset (a seed or calibration file uses
    partition -1 and the line number). `Source` and the reservoir's `Ref` are positions
    that say more about the record; `position` is the bare one, for sets and keys."""

    topic: str
    partition: int
    offset: int

    @property
    def position(self) -> Position:
        return Position(self.topic, self.partition, self.offset)

    def astuple(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class Source(Position):
    """Where a record came from; echoed in every output so it can be traced back."""

    timestamp: int  # milliseconds since the epoch, as the broker stamped it
    key: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": _key_text(self.key),
        }


@dataclass(frozen=True, slots=True)
class Comment:
    """A valid comment ready to embed."""

    source: Source
    text: str
    id: str | None
    key: str | None = None  # the value of scoring.key_field, when set and present


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be scored, and why."""

    source: Source
    reason: str  # invalid_json | duplicate_field | near_duplicate_field | missing_text ...
    error: str
    value: bytes | None


def estimate_tokens(text: str) -> int:
    """A conservative token estimate: CJK characters count one each, other text bytes/3.

    Real tokenisers give about 1 token per CJK character and 4 characters per token
    for English, so this over-estimates, which is the safe side of a hard limit.
    """
    cjk = len(_CJK.findall(text))
    rest = len(text.encode("utf-8")) - 3 * cjk
    return cjk + max(0, rest) // 3 + 1


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Cut `text` so that `estimate_tokens` fits `max_tokens` (binary search on length)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def source_of(record: KafkaRecord) -> Source:
    return Source(record.topic, record.partition, record.offset, record.timestamp, record.key)


def decode(record: KafkaRecord, settings: InputSettings, key_field: str | None = None
           ) -> Comment | DeadLetter:
    """Turn one record into a comment, or a dead letter that says what is wrong.

    `key_field` (scoring.key_field) fills `Comment.key`: ``@key`` is the record key, a
    dotted path a scalar field of the JSON value; missing or not a scalar gives None.
    """
    source = source_of(record)
    raw = record.value
    if raw is None:
        return DeadLetter(source, "missing_value", "record has no value (tombstone)", None)
    if len(raw) > settings.max_bytes:
        return DeadLetter(
            source, "too_large", f"value is {len(raw)} bytes, limit {settings.max_bytes}", raw
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DeadLetter(source, "invalid_utf8", f"value is not UTF-8: {exc.reason} "
                          f"at byte {exc.start}", raw)
    comment_id: str | None = None
    key = _key_text(record.key) if key_field == "@key" else None
    if settings.format == "raw":
        text: object = decoded
    else:
        try:
            parsed = parse(decoded, _watched(settings.text_field, settings.id_field),
                           settings.max_fields)
        except JsonRefusedError as exc:
            return DeadLetter(source, exc.reason, exc.message, raw)
        if not isinstance(parsed, dict):
            return DeadLetter(
                source, "invalid_json", f"value is JSON {_json_type(parsed)}, not an object",
                raw,
            )
        near = _near_duplicate(parsed, _paths(settings.text_field, settings.id_field))
        if near is not None:
            return DeadLetter(
                source, "near_duplicate_field",
                f"field {near[0]!r} differs from {near[1]!r} only in case, spacing, invisible "
                f"or compatibility characters", raw)
        text = lookup(parsed, settings.text_field, MISSING)
        if text is MISSING:
            return DeadLetter(source, "missing_text", f"no field {settings.text_field!r}", raw)
        if not isinstance(text, str):
            return DeadLetter(
                source, "missing_text",
                f"field {settings.text_field!r} is {_json_type(text)}, not a string", raw,
            )
        raw_id = lookup(parsed, settings.id_field)
        if isinstance(raw_id, str | int) and not isinstance(raw_id, bool):
            comment_id = str(raw_id)
        if key_field is not None and key_field != "@key":
            raw_key = lookup(parsed, key_field)
            if isinstance(raw_key, str | int | float | bool):
                key = str(raw_key)
    assert isinstance(text, str)
    if not has_visible(text):
        return DeadLetter(source, "empty_text", "text is empty or only invisible characters "
                          "(whitespace, default-ignorable, fillers, marks without a base)", raw)
    if estimate_tokens(text) > settings.max_tokens:
        if settings.on_too_long == "dead_letter":
            return DeadLetter(
                source, "too_long",
                f"text is about {estimate_tokens(text)} tokens, limit {settings.max_tokens}", raw,
            )
        text = truncate_to_tokens(text, settings.max_tokens)
    return Comment(source, text, comment_id, key)


def _near_duplicate(parsed: dict[str, Any], paths: tuple[tuple[str, ...], ...]
                    ) -> tuple[str, str] | None:
    """A key beside a part of one of the `paths` that readers which trim, fold case or
    normalise keys would take for it (``"text "``, ``"Text"``, ``"te\u200bxt"``, fullwidth
    ``"ｔｅｘｔ"``): (that key, the part), or None. Only objects on the paths are looked at,
    each once."""
    forms_of: dict[int, list[str]] = {}
    for path in paths:
        current: object = parsed
        for part in path:
            if not isinstance(current, dict) or part not in current:
                break
            if len(current) > 1:
                forms = forms_of.get(id(current))
                if forms is None:
                    forms = forms_of[id(current)] = list(map(_key_form, current))
                target = _key_form(part)
                if forms.count(target) > 1:
                    return next(k for k in current if k != part and _key_form(k) == target), part
            current = current[part]
    return None


@functools.lru_cache(maxsize=8)
def _paths(*dotted: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(d.split(".")) for d in dotted)


@functools.lru_cache(maxsize=4096)  # records of one schema repeat their keys
def _key_form(key: str) -> str:
    """A key as a lenient reader sees it: NFKC, case-folded, without whitespace or
    invisible characters."""
    folded = unicodedata.normalize("NFKC", key).casefold()
    return "".join(ch for ch in folded if visible(ch))


@functools.lru_cache(maxsize=8)
def _watched(text_field: str, id_field: str) -> frozenset[str]:
    """Keys that must not repeat: every part of the text and id paths."""
    return frozenset(text_field.split(".")) | frozenset(id_field.split("."))


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


MISSING = object()  # `lookup`'s answer for a path that is absent (not null)


def lookup(obj: object, dotted: str, default: object = None) -> object:
    """The value at a dotted path (\"payload.body\") of nested objects, or `default`."""
    current: object = obj
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return default
        current = current[part]
    return current


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "b64:" + base64.b64encode(key).decode("ascii")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Context:
    """What every output says about the detector that produced it."""

    detector_name: str
    detector_version: str
    model_name: str
    model_dimension: int


def encode_score(
    comment: Comment, *, similarity: float, threshold: float, anomaly: bool, updated: bool,
    centroid_version: int, label: dict[str, Any] | None = None,
) -> bytes:
    """A score record; `label` (detector.model.alerts.label_field) only when an operator
    label decided."""
    return orjson.dumps({
        **({} if label is None else {"label": label}),
        "schema": SCORE_SCHEMA,
        "id": comment.id,
        "similarity": similarity,
        "threshold": threshold,
        "anomaly": anomaly,
        "centroid_updated": updated,
        "centroid_version": centroid_version,
        "source": comment.source.to_json(),
    })


def encode_dead_letter(letter: DeadLetter, ctx: Context, detected_at: str | None = None) -> bytes:
    return orjson.dumps({
        "schema": DEAD_LETTER_SCHEMA,
        "reason": letter.reason,
        "error": letter.error,
        "source": letter.source.to_json(),
        "value_b64": None if letter.value is None
        else base64.b64encode(letter.value[:MAX_DEAD_LETTER_VALUE]).decode(),
        "value_bytes": None if letter.value is None else len(letter.value),
        "value_truncated": letter.value is not None and len(letter.value) > MAX_DEAD_LETTER_VALUE,
        "value_sha256": None if letter.value is None else hashlib.sha256(letter.value).hexdigest(),
        "detector": {"name": ctx.detector_name, "version": ctx.detector_version},
        "detected_at": detected_at or utc_now(),
    })
