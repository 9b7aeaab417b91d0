"""Unit tests of detector.model.labels: label records, the alert cache and the learning rule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from detector.io.records import Position
from detector.model.centroid import Centroid
from detector.model.labels import (
    FEEDBACK_SCHEMA,
    AlertCache,
    CachedAlert,
    Label,
    LabelBook,
    LabelValue,
    Rejected,
    parse_label,
)

REF = Position("comments", 2, 41)


def record(**fields: Any) -> bytes:
    body: dict[str, Any] = {"schema": FEEDBACK_SCHEMA, "source":
                            {"topic": "comments", "partition": 2, "offset": 41},
                            "label": "normal"}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    out: np.ndarray = a / np.linalg.norm(a)
    return out


def alert(offset: int, vector: list[float], comment_id: str | None = None) -> CachedAlert:
    return CachedAlert(Position("comments", 2, offset), comment_id, unit(vector), 0.1)


class TestParse:
    def test_a_complete_label_parses(self) -> None:
        label = parse_label(record(id=17, text="fine", labeller="alice",
                                   time="2026-11-26T12:00:00+00:00", label="anomaly"))
        assert label == Label(REF, "17", "anomaly", "fine", "alice",
                              "2026-11-26T12:00:00+00:00")

    def test_an_id_alone_names_the_comment(self) -> None:
        label = parse_label(record(source=..., id="c-1"))
        assert isinstance(label, Label)
        assert (label.source, label.id) == (None, "c-1")

    @pytest.mark.parametrize(("raw", "reason"), [
        (None, "missing_value"),
        (b"x" * 70_000, "too_large"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (orjson.dumps({"label": "normal", "id": "1"}), "wrong_schema"),
        (record(source=...), "missing_target"),
        (record(label="spam"), "invalid_label"),
        (record(label=...), "invalid_label"),
        (record(source={"topic": "comments", "partition": -1, "offset": 3}), "invalid_field"),
        (record(source={"topic": "comments", "offset": 3}), "invalid_field"),
        (record(source={"topic": "c", "partition": True, "offset": 3}), "invalid_field"),
        (record(time="yesterday"), "invalid_field"),
        (record(text=""), "invalid_field"),
        (record(labeller="x" * 300), "invalid_field"),
        (record(extra=1), "invalid_field"),
    ])
    def test_a_malformed_label_is_rejected_with_a_reason(self, raw: bytes | None,
                                                          reason: str) -> None:
        result = parse_label(raw)
        assert isinstance(result, Rejected)
        assert result.reason == reason
        assert result.error


class TestAlertCache:
    def test_an_alert_is_found_by_source_or_by_id(self) -> None:
        cache = AlertCache(10)
        cached = alert(41, [1, 0, 0], "c-1")
        cache.remember(cached)
        for label in (Label(REF, None, "normal"), Label(None, "c-1", "normal")):
            found = cache.find(label)
            assert found is not None
            assert (found.source, found.id) == (REF, "c-1")
            assert found.embedding.dtype == np.float32  # half the memory of float64
            np.testing.assert_allclose(found.embedding, cached.embedding, rtol=1e-6)
        assert cache.find(Label(Position("comments", 2, 42), "c-1", "normal")) is None

    def test_the_oldest_alerts_are_evicted(self) -> None:
        cache = AlertCache(2)
        for offset in (1, 2, 3):
            cache.remember(alert(offset, [1, 0, 0], f"c-{offset}"))
        assert len(cache) == 2
        assert cache.evictions == 1
        assert cache.find(Label(None, "c-1", "normal")) is None
        assert cache.find(Label(None, "c-3", "normal")) is not None


class TestLabelBook:
    def test_a_normal_label_moves_the_centroid_towards_the_comment(self) -> None:
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]] * 10)
        book = LabelBook(weight=10.0, max_labels=100)
        cached = alert(41, [0, 1, 0])
        before = float(centroid.similarity(cached.embedding))
        assert book.apply(Label(REF, None, "normal"), centroid, alert=cached) == "taught"
        assert float(centroid.similarity(cached.embedding)) > before + 0.5
        assert centroid.weight == pytest.approx(20.0)
        assert book.precision.false_alerts == 1

    def test_repeating_a_label_teaches_once(self) -> None:
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]])
        book = LabelBook(weight=1.0, max_labels=100)
        cached = alert(41, [0, 1, 0])
        book.apply(Label(REF, None, "normal"), centroid, alert=cached)
        assert book.apply(Label(REF, None, "normal"), centroid, alert=cached) == "unchanged"
        assert centroid.weight == pytest.approx(2.0)

    def test_an_anomaly_label_never_teaches_and_undoes_a_normal_one(self) -> None:
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]] * 4)
        original = centroid.vector.copy()
        book = LabelBook(weight=3.0, max_labels=100)
        cached = alert(41, [0, 1, 0])
        assert book.apply(Label(REF, None, "anomaly"), centroid, alert=cached) == "excluded"
        np.testing.assert_allclose(centroid.vector, original)
        book.apply(Label(REF, None, "normal"), centroid, alert=cached)
        assert book.apply(Label(REF, None, "anomaly"), centroid, alert=cached) == "untaught"
        np.testing.assert_allclose(centroid.vector, original, atol=1e-12)
        assert centroid.weight == pytest.approx(4.0)
        assert (book.precision.true_alerts, book.precision.false_alerts) == (1, 0)

    def test_only_the_most_recent_teachings_can_be_undone(self) -> None:
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]] * 4)
        book = LabelBook(weight=1.0, max_labels=100, undo_capacity=1)
        first, second = alert(1, [0, 1, 0]), alert(2, [0, 0, 1])
        for cached in (first, second):
            book.apply(Label(cached.source, None, "normal"), centroid, alert=cached)
        assert book.apply(Label(first.source, None, "anomaly"), centroid,
                          alert=first) == "excluded"
        assert book.undo_missed == 1
        assert centroid.weight == pytest.approx(6.0)  # the first teaching stays
        assert book.apply(Label(second.source, None, "anomaly"), centroid,
                          alert=second) == "untaught"
        assert centroid.weight == pytest.approx(5.0)

    def test_precision_counts_the_latest_label_of_each_alert(self) -> None:
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]])
        book = LabelBook(weight=1.0, max_labels=100)
        values: list[LabelValue] = ["anomaly", "anomaly", "normal", "anomaly"]
        for offset, value in enumerate(values):
            cached = alert(offset, [0, 1, 0])
            book.apply(Label(cached.source, None, value), centroid, alert=cached)
        assert book.precision.value == pytest.approx(0.75)
        assert math.isnan(LabelBook(1.0, 1).precision.value)

    def test_a_normal_label_without_an_embedding_is_unresolved_until_its_text_comes(
            self) -> None:
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]])
        book = LabelBook(weight=1.0, max_labels=100)
        label = Label(None, "gone", "normal")
        assert book.apply(label, centroid) == "unresolved"
        assert book.precision.unresolved == 1
        assert centroid.weight == pytest.approx(1.0)
        assert book.apply(label, centroid, embedding=unit([0, 0, 1])) == "taught"
        assert book.precision.false_alerts == 0  # not known to have been an alert

    def test_the_book_holds_max_labels_and_forgets_the_oldest(self) -> None:
        """Repeating a held label changes nothing; past max_labels the oldest label is
        forgotten, so the same label applies afresh. (Leaving anomaly-labelled comments
        out of calibration is detector.calibration.exclusions: tests/test_exclusions.py.)"""
        centroid = Centroid.from_vectors([[1.0, 0.0, 0.0]])
        book = LabelBook(weight=1.0, max_labels=2)
        cached = alert(41, [0, 1, 0], "c-41")
        label = Label(None, "c-41", "anomaly")
        assert book.apply(label, centroid, alert=cached) == "excluded"
        assert book.apply(label, centroid, alert=cached) == "unchanged"
        for offset in (1, 2):  # bounded: the oldest label is forgotten
            other = alert(offset, [0, 0, 1])
            book.apply(Label(other.source, None, "normal"), centroid, alert=other)
        assert len(book) == 2
        assert book.apply(label, centroid, alert=cached) == "excluded"
