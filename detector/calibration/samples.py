"""Reading comment texts from JSONL files (seed samples, calibration inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from detector.config import InputSettings
from detector.errors import ConfigError
from detector.io.records import lookup


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a samples file: its text and, when the file has them, its label, key
    and id."""

    text: str
    label: bool | None = None
    key: str | None = None  # the value of the key field (per-key calibration)
    id: str | None = None  # the value of input.id_field, as a record's comment id


def read_samples(path: Path, settings: InputSettings, label_field: str | None = None,
                 key_field: str | None = None) -> tuple[list[Sample], int]:
    """Samples of a JSONL file (or raw lines when `settings.format` is raw).

    `key_field` is a dotted path to each line's key (``@key`` reads a field ``key``, where
    a topic dump keeps the record key). A line's id is read from `settings.id_field` the
    way a record's is (a string or an integer, else none).

    Returns the samples and the number of lines skipped (blank text, bad JSON, no text
    field). A missing or unreadable file is a `ConfigError` naming it.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read samples file {path}: {exc}"
        raise ConfigError(msg) from None
    samples: list[Sample] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        if settings.format == "raw":
            samples.append(Sample(line))
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            skipped += 1
            continue
        text = lookup(obj, settings.text_field)
        if not isinstance(text, str) or not text.strip():
            skipped += 1
            continue
        label = bool(lookup(obj, label_field)) if label_field else None
        key = None
        if key_field is not None:
            raw_key = lookup(obj, "key" if key_field == "@key" else key_field)
            key = str(raw_key) if isinstance(raw_key, str | int | float | bool) else None
        raw_id = lookup(obj, settings.id_field)
        sample_id = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(
            raw_id, bool) else None
        samples.append(Sample(text, label, key, sample_id))
    return samples, skipped


def read_texts(path: Path, settings: InputSettings) -> list[str]:
    """Just the texts of a samples file."""
    return [s.text for s in read_samples(path, settings)[0]]
