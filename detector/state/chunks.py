"""Published calibration records larger than one Kafka message: split and reassembled.
Pure, no I/O (the publish path is detector.commands.calibrate, the read path
detector.state.store).

Design notes: docs/design/modules.md.
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
