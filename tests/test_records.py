"""Decoding records into comments or dead letters, and the output schemas."""

from __future__ import annotations

import base64
import gc
import hashlib
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import InputSettings
from detector.io import jsondoc
from detector.io import records as rec
from detector.model.alerts import encode_alert
from detector.model.baselines import Judgement
from detector.model.reservoir import Neighbour, Ref
from tests.helpers import FakeRecord

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
        """an alert (detector.alert/v2) carries every documented field."""
        judged = Judgement(key="shop", judged_by="key", score=0.1, similarity=0.15,
                         threshold=0.2, threshold_source="key", centroid_version=3,
                         centroid_count=10.0, anomaly=True, accepted=False,
                         nearest=(Neighbour(0.9, Ref("comments", 1, 7, "c0", "near")),))
        alert = orjson.loads(encode_alert(self.comment(), judged, method="knn", ctx=self.CTX,
                                          detected_at="t", calibration="v-1"))
        assert alert == {
            "schema": "detector.alert/v2", "id": "c1", "text": "spam spam", "similarity": 0.1,
            "threshold": 0.2, "method": "knn", "centroid_similarity": 0.15,
            "baseline": {"scope": "key", "key": "shop", "comment_key": "shop",
                         "threshold": 0.2, "threshold_source": "key",
                         "centroid": {"version": 3, "count": 10.0}},
            "calibration": "v-1",
            "nearest": [{"similarity": 0.9, "text": "near", "source": {
                "topic": "comments", "partition": 1, "offset": 7, "id": "c0"}}],
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

    def test_dead_letter_keeps_every_admitted_byte_with_size_and_hash(self) -> None:
        """a record as large as input.max_bytes admits is kept whole (it used to be cut at
        64 KiB); a larger one keeps a documented prefix with its size and SHA-256."""
        admitted = b'{"text": 1, "pad": "' + b"a" * (JSON.max_bytes - 30) + b'"}'
        assert len(admitted) <= JSON.max_bytes
        letter = rec.decode(FakeRecord(admitted), JSON)
        assert isinstance(letter, rec.DeadLetter)
        out = orjson.loads(rec.encode_dead_letter(letter, self.CTX))
        assert base64.b64decode(out["value_b64"]) == admitted
        assert (out["value_bytes"], out["value_truncated"]) == (len(admitted), False)
        assert out["value_sha256"] == hashlib.sha256(admitted).hexdigest()
        huge = b"x" * (rec.MAX_DEAD_LETTER_VALUE + 10)
        big = rec.decode(FakeRecord(huge), JSON)
        assert isinstance(big, rec.DeadLetter)
        assert big.reason == "too_large"
        encoded = rec.encode_dead_letter(big, self.CTX)
        assert len(encoded) < 1_000_000  # under the broker's default message limit
        cut = orjson.loads(encoded)
        assert base64.b64decode(cut["value_b64"]) == huge[:rec.MAX_DEAD_LETTER_VALUE]
        assert (cut["value_bytes"], cut["value_truncated"]) == (len(huge), True)
        assert cut["value_sha256"] == hashlib.sha256(huge).hexdigest()


class TestJsonEdgeCases:
    """What standard JSON readers accept is accepted; what is ambiguous is refused."""

    def test_top_level_json_string_is_not_an_error_message(self) -> None:
        """a JSON string value is dead-lettered as a string, not with its own text as the
        error (errors and parse results are different types)."""
        out = rec.decode(FakeRecord(b'"The blender works great."'), JSON)
        assert isinstance(out, rec.DeadLetter)
        assert out.reason == "invalid_json"
        assert out.error == "value is JSON string, not an object"

    def test_null_text_says_null_not_missing(self) -> None:
        """{"text": null} names the null, not a missing field; a missing field stays so."""
        out = rec.decode(FakeRecord(b'{"text": null}'), JSON)
        assert isinstance(out, rec.DeadLetter)
        assert out.reason == "missing_text"
        assert out.error == "field 'text' is null, not a string"
        missing = rec.decode(FakeRecord(b'{"body": "x"}'), JSON)
        assert isinstance(missing, rec.DeadLetter)
        assert missing.error == "no field 'text'"

    @pytest.mark.parametrize(
        "value",
        [
            b'{"text": "good blender", "rating": 1e999}',
            b'{"text": "good blender", "rating": -1e999}',
            b'{"text": "good blender", "rating": ' + b"9" * 401 + b"}",
            b'{"text": "good blender", "rating": -' + b"9" * 5000 + b"}",
            b'\xef\xbb\xbf{"text": "good blender"}',
        ],
        ids=["1e999", "-1e999", "401-digit-int", "5000-digit-int", "utf8-bom"],
    )
    def test_numbers_orjson_refuses_and_a_bom_are_accepted(self, value: bytes) -> None:
        """huge numbers in unread fields and a UTF-8 BOM are valid input."""
        out = rec.decode(FakeRecord(value), JSON)
        assert isinstance(out, rec.Comment), out
        assert out.text == "good blender"

    @pytest.mark.parametrize(
        "value",
        [
            b'{"text": "x", "rating": NaN}',
            b'{"text": "x", "rating": Infinity}',
            b'{"text": "x", "rating": -Infinity}',
            b'{"text": "x", "rating": 1e999,}',
            b'{"text": "x", "rating": 1e999} trailing',
            b'{"text": "\\ud800 lone surrogate", "rating": 1e999}',
            b'{"text": "\\ud800 lone surrogate"}',
            b'\xef\xbb\xbf\xef\xbb\xbf{"text": "two boms"}',
            b"\xef\xbb\xbf",
        ],
    )
    def test_slow_path_still_refuses_invalid_json(self, value: bytes) -> None:
        """the exact fallback path is no laxer than JSON: NaN/Infinity literals, trailing
        commas or content, lone surrogates and a doubled BOM are invalid_json."""
        assert reason_of(value) == "invalid_json"

    def test_brackets_inside_strings_do_not_count_as_nesting(self) -> None:
        """a comment whose text holds 70 '[' (and escaped quotes) has depth 1."""
        text = 'see [[[ "quoted \\" [[[' + "[" * 70 + " {{{"
        out = rec.decode(FakeRecord(orjson.dumps({"text": text})), JSON)
        assert isinstance(out, rec.Comment), out
        assert out.text == text

    def test_real_nesting_is_bounded_and_deep_documents_refused_cheaply(self) -> None:
        """65 real levels are refused; a 100,000-deep document too, in well under 50 ms."""
        ok = b'{"text": "x", "n": ' + b"[" * 63 + b"]" * 63 + b"}"
        assert isinstance(rec.decode(FakeRecord(ok), JSON), rec.Comment)
        deep = b'{"text": "x", "n": ' + b"[" * 64 + b"]" * 64 + b"}"
        letter = rec.decode(FakeRecord(deep), JSON)
        assert isinstance(letter, rec.DeadLetter)
        assert (letter.reason, letter.error) == ("invalid_json",
                                                 "JSON nested deeper than 64 levels")
        huge = b"[" * 100_000 + b"]" * 100_000
        started = time.perf_counter()
        assert reason_of(huge, InputSettings(max_bytes=1_000_000)) == "invalid_json"
        assert time.perf_counter() - started < 0.05

    def test_unterminated_strings_do_not_make_the_scanner_quadratic(self) -> None:
        """hostile input with many escaped quotes and brackets stays linear."""
        hostile = b'{"text": "' + b'\\"[' * 80_000
        started = time.perf_counter()
        assert reason_of(hostile) == "invalid_json"
        assert time.perf_counter() - started < 0.2

    @pytest.mark.parametrize(
        "value",
        [
            b'{"text": "BUY FOLLOWERS", "text": "The backpack is well made."}',
            b'{"te\\u0078t": "BUY FOLLOWERS", "text": "The backpack is well made."}',
            b'{"id": 1, "text": "fine", "id": 2}',
            b'{"text": "fine", "rating": 1e999, "text": "other"}',
        ],
        ids=["text-twice", "escaped-key", "id-twice", "slow-path"],
    )
    def test_duplicate_text_or_id_field_is_dead_lettered(self, value: bytes) -> None:
        """a record whose text or id field appears twice has its own reason."""
        letter = rec.decode(FakeRecord(value), JSON)
        assert isinstance(letter, rec.DeadLetter)
        assert letter.reason == "duplicate_field"
        assert "appears more than once" in letter.error

    def test_duplicates_elsewhere_and_names_inside_values_are_fine(self) -> None:
        """other repeated keys, and the field's name quoted inside a value, are accepted."""
        for value in (b'{"text": "say \\"text\\" twice: \\"text\\"", "a": 1, "a": 2}',
                      b'{"text": "\\u4e0d\\u9519", "note": "\\"text\\""}',
                      b'{"id": 1, "user": {"id": 2}, "text": "fine"}'):
            out = rec.decode(FakeRecord(value), JSON)
            assert isinstance(out, rec.Comment), (value, out)

    def test_nested_field_duplicates_are_found(self) -> None:
        """with a dotted text_field, a repeated key on the path is refused."""
        settings = InputSettings(text_field="payload.body")
        value = b'{"payload": {"body": "spam", "body": "fine"}}'
        assert reason_of(value, settings) == "duplicate_field"


def many_fields(count: int, *, extra: str = '"id": 7, "meta": {"id": 1}') -> bytes:
    """A record of `count` object members that takes the exact path (a nested "id")."""
    body = ", ".join(f'"k{i}": "v{i}"' for i in range(count - 4))
    return f'{{"text": "hello", {extra}, {body}}}'.encode()


class TestNearDuplicateKeys:
    @pytest.mark.parametrize("value", [
        b'{"text": "a", "text ": "b"}', b'{"text": "a", " text": "b"}',
        b'{"Text": "b", "text": "a"}', b'{"text": "a", "TEXT": "b"}',
        b'{"text": "a", "te\\u200bxt": "b"}', '{"text": "a", "ｔｅｘｔ": "b"}'.encode(),
        b'{"text": "a", "text\\t": "b"}', b'{"text": "a", "id": 1, "Id": 2}',
    ])
    def test_a_key_that_lenient_readers_take_for_the_text_is_dead_lettered(
            self, value: bytes) -> None:
        """{"text": "a", "text ": "b"} was scored as "a" with nothing to say that a reader
        trimming or case-folding keys sees "b"."""
        letter = rec.decode(FakeRecord(value), JSON)
        assert isinstance(letter, rec.DeadLetter)
        assert letter.reason == "near_duplicate_field"

    def test_nested_paths_and_unrelated_keys(self) -> None:
        nested = InputSettings(text_field="payload.body")
        assert reason_of(b'{"payload": {"body": "a", "Body": "b"}}', nested) == (
            "near_duplicate_field")
        fine = [b'{"payload": {"body": "a"}, "Body": "b"}',  # not beside the path
                b'{"payload": {"body": "a", "bodies": "b", "body_html": "c"}}']
        for value in fine:
            assert isinstance(rec.decode(FakeRecord(value), nested), rec.Comment)
        assert isinstance(rec.decode(FakeRecord(b'{"text": "a", "texts": "b", "context": 1}'),
                                     JSON), rec.Comment)


class TestFieldLimit:
    def test_too_many_fields_is_its_own_dead_letter_reason(self) -> None:
        """members of all objects count; the limit is input.max_fields."""
        assert reason_of(many_fields(10_001)) == "too_many_fields"
        assert isinstance(rec.decode(FakeRecord(many_fields(10_000)), JSON), rec.Comment)
        small = InputSettings(max_fields=5)
        assert reason_of(b'{"text": "a", "b": {"c": 1, "d": {"e": 2, "f": 3}}}',
                         small) == "too_many_fields"
        assert isinstance(rec.decode(FakeRecord(b'{"text": "a", "b": {"c": 1, "d": 2}}'),
                                     small), rec.Comment)

    def test_colons_inside_strings_are_not_fields(self) -> None:
        """a text full of colons (times, URLs) is not refused."""
        out = rec.decode(FakeRecord(orjson.dumps({"text": "12:00 http://x " * 1000})),
                         InputSettings(max_fields=3))
        assert isinstance(out, rec.Comment)

    def test_the_exact_path_costs_about_what_the_fast_path_costs(self) -> None:
        """a record forced onto the standard-library path by a nested "id" costs a small
        multiple of the same record without it (it cost 10-60x: a Python callback per
        integer and a walk of every string for lone surrogates)."""
        def cost(value: bytes) -> float:  # CPU time of this thread: the machine is shared
            best = float("inf")
            gc.collect()
            gc.disable()  # a collection that other tests' garbage triggers is not the cost
            try:
                for _ in range(5):
                    start = time.thread_time()
                    assert isinstance(rec.decode(FakeRecord(value), JSON), rec.Comment)
                    best = min(best, time.thread_time() - start)
            finally:
                gc.enable()
            return best

        numbers = b'{"text": "hello", "id": 7, "meta": {"id": 1}, "a": [' + b", ".join(
            b"%d" % i for i in range(20_000)) + b"]}"
        strings = b'{"text": "hello", "id": 7, "meta": {"id": 1}, "a": [' + b", ".join(
            b'"s%d"' % i for i in range(20_000)) + b"]}"
        for slow in (numbers, strings):
            fast = slow.replace(b'{"id"', b'{"xx"')
            assert cost(slow) < 5 * cost(fast) + 0.002


class TestNestingScanner:
    @given(depth=st.integers(min_value=1, max_value=80),
           inner=st.text(alphabet='[]{}"\\\\:,ab \u4e0d\n', max_size=40),
           keyed=st.booleans())
    @settings(max_examples=300, deadline=None)
    def test_counts_real_nesting_only(self, depth: int, inner: str, keyed: bool) -> None:
        """for any string content (brackets, quotes, backslashes), the scanner's verdict is
        the document's real depth compared with the bound."""
        value: object = inner
        for level in range(depth):
            value = {"k" + inner: value} if keyed and level % 2 else [value, inner]
        text = orjson.dumps(value).decode()
        assert jsondoc.too_deep(text) == (depth > jsondoc.MAX_NESTING)


class TestKeyField:
    """scoring.key_field: the comment's key for per-key baselines."""

    def _record(self, value: bytes, key: bytes | None = b"k1") -> object:
        from types import SimpleNamespace

        return SimpleNamespace(topic="t", partition=0, offset=1, timestamp=0, key=key,
                               value=value)

    def test_dotted_path_selects_the_key(self) -> None:
        """A dotted path reads a scalar field of the JSON value (numbers as text)."""
        from detector.config import InputSettings
        from detector.io.records import Comment, decode

        got = decode(self._record(b'{"text": "hi", "meta": {"shop": 42}}'),  # type: ignore[arg-type]
                     InputSettings(), "meta.shop")
        assert isinstance(got, Comment)
        assert got.key == "42"

    def test_record_key_and_missing_field(self) -> None:
        """@key is the Kafka record key; a missing or non-scalar field gives no key."""
        from detector.config import InputSettings
        from detector.io.records import Comment, decode

        rec1 = decode(self._record(b'{"text": "hi"}'), InputSettings(), "@key")  # type: ignore[arg-type]
        rec2 = decode(self._record(b'{"text": "hi", "shop": [1]}'), InputSettings(),  # type: ignore[arg-type]
                      "shop")
        assert isinstance(rec1, Comment)
        assert rec1.key == "k1"
        assert isinstance(rec2, Comment)
        assert rec2.key is None
