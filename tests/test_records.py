"""Decoding records into comments or dead letters, and the output schemas."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson
import pytest

from detector import records as rec
from detector.config import InputSettings


@dataclass
class FakeRecord:
    value: bytes | None
    key: bytes | None = b"k1"
    topic: str = "comments"
    partition: int = 0
    offset: int = 42
    timestamp: int = 1_700_000_000_000


JSON = InputSettings()


def reason_of(value: bytes | None, settings: InputSettings = JSON) -> str:
    out = rec.decode(FakeRecord(value), settings)
    assert isinstance(out, rec.DeadLetter), out
    return out.reason


class TestDecode:
    def test_valid_json_comment(self) -> None:
        """text and id are read from their fields; the source is kept."""
        out = rec.decode(FakeRecord(b'{"id": 7, "text": "great blender"}'), JSON)
        assert isinstance(out, rec.Comment)
        assert (out.text, out.id, out.source.offset, out.source.key) == (
            "great blender", "7", 42, b"k1")

    def test_nested_text_field(self) -> None:
        """a dotted text_field reaches into nested objects."""
        settings = InputSettings(text_field="payload.body")
        out = rec.decode(FakeRecord(b'{"payload": {"body": "hi there"}}'), settings)
        assert isinstance(out, rec.Comment)
        assert out.text == "hi there"

    def test_raw_format_takes_the_whole_value(self) -> None:
        """format raw uses the UTF-8 value as the text."""
        out = rec.decode(FakeRecord("不错的产品".encode()), InputSettings(format="raw"))
        assert isinstance(out, rec.Comment)
        assert out.text == "不错的产品"

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (b"not json", "invalid_json"),
            (b"\xff\xfe{}", "invalid_utf8"),
            (b'{"other": 1}', "missing_text"),
            (b'{"text": 12}', "missing_text"),
            (b'{"text": "   "}', "empty_text"),
            (b'{"text": "\\u200b\\u200b"}', "empty_text"),
            (b"[1, 2]", "invalid_json"),
            (None, "missing_value"),
            (b"[" * 100 + b"]" * 100, "invalid_json"),
        ],
    )
    def test_bad_records_become_dead_letters(self, value: bytes | None, reason: str) -> None:
        """each kind of bad record gets its own reason."""
        assert reason_of(value) == reason

    def test_oversized_value_is_refused_before_parsing(self) -> None:
        """values above max_bytes are dead-lettered as too_large."""
        assert reason_of(b'{"text": "' + b"a" * 2000 + b'"}', InputSettings(max_bytes=1000)) == (
            "too_large")

    def test_too_long_text_dead_letter_or_truncate(self) -> None:
        """texts over max_tokens are dead-lettered, or truncated when configured."""
        value = orjson.dumps({"text": "word " * 500})
        assert reason_of(value, InputSettings(max_tokens=100)) == "too_long"
        out = rec.decode(FakeRecord(value), InputSettings(max_tokens=100, on_too_long="truncate"))
        assert isinstance(out, rec.Comment)
        assert rec.estimate_tokens(out.text) <= 100
        assert len(out.text) > 200

    def test_token_estimate_counts_cjk_characters(self) -> None:
        """each CJK character counts as a token; ASCII about a third of its bytes."""
        assert rec.estimate_tokens("好" * 30) == 31
        assert rec.estimate_tokens("a" * 30) == 11


class TestEncode:
    CTX = rec.Context("det", "1.0", "m", 512)

    def comment(self) -> rec.Comment:
        out = rec.decode(FakeRecord(b'{"id": "c1", "text": "spam spam"}', key=b"\xff\x00"), JSON)
        assert isinstance(out, rec.Comment)
        return out

    def test_alert_schema(self) -> None:
        """an alert carries every documented field."""
        alert = orjson.loads(rec.encode_alert(
            self.comment(), similarity=0.1, threshold=0.2, centroid_version=3,
            centroid_count=10.0, ctx=self.CTX, detected_at="t"))
        assert alert == {
            "schema": "detector.alert/v1", "id": "c1", "text": "spam spam", "similarity": 0.1,
            "threshold": 0.2,
            "source": {"topic": "comments", "partition": 0, "offset": 42,
                       "timestamp": 1_700_000_000_000, "key": "b64:/wA="},
            "centroid": {"version": 3, "count": 10.0}, "model": {"name": "m", "dimension": 512},
            "detector": {"name": "det", "version": "1.0"}, "detected_at": "t",
        }

    def test_dead_letter_keeps_the_original_bytes(self) -> None:
        """value_b64 holds the exact original value."""
        letter = rec.decode(FakeRecord(b"\xff oops"), JSON)
        assert isinstance(letter, rec.DeadLetter)
        out = orjson.loads(rec.encode_dead_letter(letter, self.CTX))
        assert out["schema"] == "detector.dead-letter/v1"
        assert out["reason"] == "invalid_utf8"
        assert base64.b64decode(out["value_b64"]) == b"\xff oops"


class TestKeyField:
    """scoring.key_field: the comment's key for per-key baselines."""

    def _record(self, value: bytes, key: bytes | None = b"k1") -> object:
        from types import SimpleNamespace

        return SimpleNamespace(topic="t", partition=0, offset=1, timestamp=0, key=key,
                               value=value)

    def test_dotted_path_selects_the_key(self) -> None:
        """A dotted path reads a scalar field of the JSON value (numbers as text)."""
        from detector.config import InputSettings
        from detector.records import Comment, decode

        got = decode(self._record(b'{"text": "hi", "meta": {"shop": 42}}'),  # type: ignore[arg-type]
                     InputSettings(), "meta.shop")
        assert isinstance(got, Comment)
        assert got.key == "42"

    def test_record_key_and_missing_field(self) -> None:
        """@key is the Kafka record key; a missing or non-scalar field gives no key."""
        from detector.config import InputSettings
        from detector.records import Comment, decode

        rec1 = decode(self._record(b'{"text": "hi"}'), InputSettings(), "@key")  # type: ignore[arg-type]
        rec2 = decode(self._record(b'{"text": "hi", "shop": [1]}'), InputSettings(),  # type: ignore[arg-type]
                      "shop")
        assert isinstance(rec1, Comment)
        assert rec1.key == "k1"
        assert isinstance(rec2, Comment)
        assert rec2.key is None
