"""Parse a record's JSON value as a standard JSON reader would, quickly and safely.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

import numpy as np
import orjson

MAX_NESTING = 64  # JSON deeper than this is refused before it costs recursion
_MAX_INT_DIGITS = 4_000  # Python's int() refuses more than 4,300 digits by default

# A string literal, escapes included; an unterminated one runs to the end of the text.
# Possessive loops and one token per string keep every scan linear, even on hostile input.
_STRING_OR_TAIL = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
# In valid JSON: each string literal, and whether a colon follows it (then it is a key).
_STRING_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"(\s*:)?', re.DOTALL)
# A run of digits too long for int() (in a number or a string: either way rare).
_LONG_DIGITS = re.compile(f"[0-9]{{{_MAX_INT_DIGITS + 1}}}")
# An escape of a surrogate code point: the only way a lone surrogate gets into parsed text
# (the text itself is valid UTF-8, so it holds none).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_STEPS = np.zeros(256, dtype=np.int8)
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1


class JsonRefusedError(ValueError):
    """The value is not acceptable JSON; `reason` is the dead-letter reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse(text: str, watched: Collection[str] = (), max_fields: int | None = None) -> object:
    """The parsed value of `text`; raises `JsonRefusedError` when it is not acceptable JSON, a
    key named in `watched` is repeated within one object, or its objects have more than
    `max_fields` members in all (counted before any parser runs)."""
    if too_deep(text):
        raise JsonRefusedError("invalid_json", f"JSON nested deeper than {MAX_NESTING} levels")
    if max_fields is not None:
        fields = count_fields(text, max_fields)
        if fields > max_fields:
            raise JsonRefusedError("too_many_fields",
                                   f"JSON has {fields} object members, limit {max_fields}")
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _parse_exact(text, watched, f"value is not JSON: {exc}", big_numbers=True)
    if watched and _may_repeat(text, watched):
        _parse_exact(text, watched, "value is not JSON", big_numbers=False)
    return parsed


def too_deep(text: str) -> bool:
    """True when brackets outside string literals nest deeper than `MAX_NESTING`."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False  # the common case: too few brackets to matter, whatever they are
    structure = _STRING_OR_TAIL.sub("", text).encode("utf-8", "surrogatepass")
    steps = _STEPS[np.frombuffer(structure, dtype=np.uint8)]
    return bool(len(steps)) and int(np.cumsum(steps, dtype=np.int32).max()) > MAX_NESTING


def count_fields(text: str, limit: int) -> int:
    """The number of object members in `text` (colons outside string literals), counted
    exactly only when the colons of the whole text exceed `limit` (the common case costs
    one `str.count`)."""
    colons = text.count(":")
    if colons <= limit:
        return colons
    return _STRING_OR_TAIL.sub("", text).count(":")


def _may_repeat(text: str, watched: Collection[str]) -> bool:
    """Cheap test on the raw text of valid JSON: could a watched key appear twice?"""
    for name in watched:
        if text.count(f'"{name}"') > 1:
            return True
    if "\\" not in text:
        return False
    # a key spelled with escapes ("te\u0078t") hides from the count above
    return any(m.group(1) and "\\" in m.group(0) for m in _STRING_TOKEN.finditer(text))


def _parse_exact(text: str, watched: Collection[str], fast_error: str, *,
                 big_numbers: bool) -> object:
    """The standard library's parser, as strict as JSON, reporting repeated keys."""
    body = text[1:] if text.startswith("\ufeff") else text
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) < len(items):  # some key repeats: is it a watched one?
            keys = [key for key, _ in items]
            repeated.extend(name for name in watched if name in obj and keys.count(name) > 1)
        return obj

    # Python callbacks per integer and a walk of every string cost microseconds per value:
    # only records that could need them pay for them.
    # (orjson parsed every number of a record that is here only for a repeated key)
    extra: dict[str, Any] = {}
    if big_numbers and _LONG_DIGITS.search(body):
        extra["parse_int"] = _integer
    try:
        parsed = json.loads(body, object_pairs_hook=pairs, parse_constant=_no_constant,
                            **extra)
    except (ValueError, RecursionError):
        raise JsonRefusedError("invalid_json", fast_error) from None
    if repeated:
        raise JsonRefusedError("duplicate_field",
                      f"field {repeated[0]!r} appears more than once in one object")
    if _SURROGATE_ESCAPE.search(body):
        _check_strings(parsed)
    return parsed


def _no_constant(name: str) -> object:
    msg = f"{name} is not a JSON value"
    raise ValueError(msg)


def _integer(digits: str) -> int | float:
    """Exact up to `_MAX_INT_DIGITS` digits; beyond, a float (inf): nobody reads it."""
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else float(digits)


def _check_strings(value: object) -> None:
    """Refuse lone surrogates (valid escapes, invalid text that no output could encode).
    Only the slow path walks the value; its depth is bounded by `MAX_NESTING`."""
    strings: list[str] = []
    if isinstance(value, str):
        strings.append(value)
    elif isinstance(value, dict):
        strings.extend(value)
        for item in value.values():
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
    for s in strings:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonRefusedError("invalid_json", "value is not JSON: lone surrogate in a string"
                          ) from None
