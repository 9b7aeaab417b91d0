"""Published calibration records larger than one Kafka message: split and reassembled.
Pure, no I/O (the publish path is detector.commands.calibrate, the read path
detector.state.store).

A published artifact (detector.state.published) at the default ``scoring.reservoir_size``
of 2,000 exemplars is about 1.7 MB at 512 dimensions and 3.3 MB at 1,024: above
aiokafka's default ``max_request_size`` (1 MiB) and the broker's default
``max.message.bytes`` (about 1 MB). Rather than asking for larger limits on the producer,
the topic and the broker, a record that does not fit in `PART_BYTES` is written as

* parts under ``NAME/calibration/VERSION/N`` (``detector.calibration-part/v1``), each
  carrying ``PART_BYTES`` of the published record base64-encoded (~683 KB of JSON), then
* a head under ``NAME/calibration`` (``detector.calibration-chunked/v1``) naming the
  version, the number of parts and the SHA-256 of the whole record, written last.

A record that fits is written unchanged under ``NAME/calibration`` as before, so replicas
of an older release still read small artifacts.

Compaction keeps the newest record per key: the newest head, and the parts of every
version until the publisher deletes (tombstones) the parts of the version it replaced.
Parts are keyed by version, so a publish that fails half-way leaves the previous head and
its parts whole: the previous artifact stays readable. A reader (`Reassembler`) keeps the
parts it has seen since the last head; a head whose parts are not all there, or whose
reassembled record does not match its digest, is ignored (logged). Parts are always
written before their head, and compaction keeps the order of what it keeps, so reading
the topic from the beginning meets the parts of the newest head before the head.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

HEAD_SCHEMA = "detector.calibration-chunked/v1"
PART_SCHEMA = "detector.calibration-part/v1"
PART_BYTES = 512 * 1024  # raw bytes per part: ~683 KB base64, under the 1 MiB limits


def head_key(name: str) -> bytes:
    return f"{name}/calibration".encode()


def part_key(name: str, version: str, index: int) -> bytes:
    return f"{name}/calibration/{version}/{index}".encode()


def split(name: str, version: str, record: bytes, *, part_bytes: int = PART_BYTES
          ) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs to write in order for the published record `record`: the record
    itself when it fits in `part_bytes`, else its parts followed by their head."""
    if len(record) <= part_bytes:
        return [(head_key(name), record)]
    pieces = [record[i:i + part_bytes] for i in range(0, len(record), part_bytes)]
    out = [(part_key(name, version, i), orjson.dumps({
        "schema": PART_SCHEMA, "name": name, "version": version, "part": i,
        "parts": len(pieces), "data": base64.b64encode(piece).decode("ascii")}))
        for i, piece in enumerate(pieces)]
    out.append((head_key(name), orjson.dumps({
        "schema": HEAD_SCHEMA, "name": name, "version": version, "parts": len(pieces),
        "bytes": len(record), "sha256": hashlib.sha256(record).hexdigest()})))
    return out


def part_keys_of(name: str, record: bytes, *, part_bytes: int = PART_BYTES) -> list[bytes]:
    """The keys of the parts `split` wrote for the published record `record` (what a
    publisher deletes once it has replaced that record); none when it fitted in one."""
    if len(record) <= part_bytes:
        return []
    try:
        version = str(orjson.loads(record)["version"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return []
    return [part_key(name, version, i) for i in range(-(-len(record) // part_bytes))]


def is_head(raw: bytes) -> bool:
    return HEAD_SCHEMA.encode() in raw[:200]


def is_part(raw: bytes) -> bool:
    return PART_SCHEMA.encode() in raw[:200]


def _head(raw: bytes) -> dict[str, Any] | None:
    if not is_head(raw):
        return None
    try:
        body: Any = orjson.loads(raw)
        if isinstance(body, dict) and body.get("schema") == HEAD_SCHEMA:
            int(body["parts"])
            str(body["version"])
            return body
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    return None


class IncompleteError(ValueError):
    """A chunked head whose parts are missing or do not add up to its digest."""


@dataclass
class Reassembler:
    """Feeds of the state topic's calibration records (heads and parts) in offset order;
    `head` returns the whole published record a head stands for."""

    parts: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def part(self, raw: bytes) -> None:
        """Remember a part (a malformed one is dropped; its head will be incomplete)."""
        try:
            body: Any = orjson.loads(raw)
            self.parts[(str(body["version"]), int(body["part"]))] = base64.b64decode(
                body["data"], validate=True)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return

    def head(self, raw: bytes) -> bytes:
        """The published record for `raw` (returned as is when it is not a chunked head);
        `IncompleteError` when parts are missing or wrong. Either way the parts seen so far are
        forgotten: parts come before their head, so those of other versions are of a
        replaced artifact or of a publish that did not finish."""
        if not is_head(raw):
            self.parts.clear()
            return raw
        body = _head(raw)
        parts, self.parts = self.parts, {}
        if body is None:
            msg = "unreadable chunked calibration head"
            raise IncompleteError(msg)
        version, count = str(body["version"]), int(body["parts"])
        missing = [i for i in range(count) if (version, i) not in parts]
        if missing:
            msg = (f"calibration {version}: {len(missing)} of its {count} parts are missing "
                   f"from the state topic")
            raise IncompleteError(msg)
        record = b"".join(parts[(version, i)] for i in range(count))
        if hashlib.sha256(record).hexdigest() != body.get("sha256"):
            msg = f"calibration {version}: its parts do not match the head's digest"
            raise IncompleteError(msg)
        return record
