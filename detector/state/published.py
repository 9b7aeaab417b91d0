"""Calibration artifacts published on the state topic, and which artifact is in force.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from detector.calibration.artifact import CalibrationArtifact, parse_artifact
from detector.errors import ConfigError
from detector.io.records import utc_now

PUBLISHED_SCHEMA = "detector.calibration-published/v1"


def record_key(name: str) -> bytes:
    return f"{name}/calibration".encode()


def version_of(artifact: CalibrationArtifact) -> str:
    """The artifact's version: a short hash of its canonical JSON."""
    body = orjson.dumps(artifact.to_json(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Published:
    """An artifact read from the state topic."""

    artifact: CalibrationArtifact
    version: str
    published_at: str

    @property
    def origin(self) -> str:
        """The base name of the shared state learnt on this artifact."""
        return f"calibration:{self.version}"


def encode(name: str, artifact: CalibrationArtifact) -> bytes:
    return orjson.dumps({"schema": PUBLISHED_SCHEMA, "name": name,
                         "version": version_of(artifact), "published_at": utc_now(),
                         "artifact": artifact.to_json()})


def is_published(raw: bytes) -> bool:
    """Whether a state record is a published artifact (cheap: no full parse)."""
    return PUBLISHED_SCHEMA.encode() in raw[:200]


def parse(raw: bytes) -> Published:
    """A published record; a `ConfigError` saying what is wrong when it is invalid."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"published calibration is not JSON: {exc}"
        raise ConfigError(msg) from None
    if not isinstance(body, dict) or body.get("schema") != PUBLISHED_SCHEMA:
        msg = f"published calibration record is not {PUBLISHED_SCHEMA}"
        raise ConfigError(msg)
    artifact = parse_artifact(body.get("artifact"), "published calibration artifact")
    return Published(artifact, version_of(artifact), str(body.get("published_at", "")))
