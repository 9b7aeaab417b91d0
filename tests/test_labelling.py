"""Unit tests of the daemon's feedback stage (detector.operating.labels), without a broker: which
replica applies a label, what it teaches, where refused labels go, and the label
positions kept in the state record."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson

from detector.config import Settings
from detector.io import records as rec
from detector.model.centroid import Centroid
from detector.state.store import ReplicaRecord, SharedCentroid
from tests.helpers import DIM, MODEL, Replica, label, unit


async def test_a_normal_label_of_a_cached_alert_teaches_the_global_baseline() -> None:
    r = Replica()
    shifted = unit(r.other * 2.0 + np.random.default_rng(3).normal(size=(5, DIM)) * 0.3)
    before = r.score(shifted)
    assert all(s < r.scorer.threshold for s in before)
    outcome = await r.stage.handle(0, 7, 0, None, label(
        source={"topic": "comments", "partition": 0, "offset": 2}, label="normal"))
    assert outcome == "taught"
    assert r.shared.own.updates == 1
    assert r.shared.own.weight == 50
    assert r.stage.positions == {0: 8}
    assert r.embedder.calls == 0  # the cache had the embedding
    assert len(r.baselines.global_.reservoir) > 0
    after = r.score(shifted, start=100)
    assert min(a - b for a, b in zip(after, before, strict=True)) > 0.05
    again = await r.stage.handle(0, 8, 0, None, label(id="c2", label="normal"))
    assert again == "unchanged"
    undone = await r.stage.handle(0, 9, 0, None, label(id="c2", label="anomaly"))
    assert undone == "untaught"
    assert r.metrics.registry.get_sample_value("detector_feedback_true_alerts") == 1
    assert r.metrics.registry.get_sample_value(
        "detector_feedback_labels_total", {"outcome": "taught", "reason": "cached"}) == 1


async def test_a_label_teaches_and_unteaches_the_alerts_key_baseline_too() -> None:
    r = Replica()
    held = r.baselines.key("site")
    rows = unit(r.other * 2.0 + np.random.default_rng(4).normal(size=(3, DIM)) * 0.3)
    items = [(rec.Comment(rec.Source("comments", 0, i, 0, None), "t", f"k{i}", "site"), row)
             for i, row in enumerate(rows)]
    verdicts = r.scorer.score(items)
    assert all(v.alert for v in verdicts)
    r.stage.observe(items, verdicts)
    src = {"topic": "comments", "partition": 0, "offset": 1}
    assert await r.stage.handle(0, 0, 0, None, label(source=src, label="normal")) == "taught"
    assert held.centroid.weight == 50
    assert held.own.updates == 1
    assert float(held.centroid.vector @ rows[1]) > 0.99
    assert len(held.reservoir) == 1
    assert await r.stage.handle(0, 1, 0, None, label(source=src, label="anomaly")) == (
        "untaught")
    assert abs(held.centroid.weight) < 1e-9
    assert held.own.updates == 2


async def test_an_uncached_label_is_skipped_unless_its_text_is_ours_to_embed() -> None:
    r = Replica()
    r.stage.input_partitions = 2
    other = label(source={"topic": "comments", "partition": 1, "offset": 5}, label="normal",
                  text="a comment")
    assert await r.stage.handle(0, 0, 0, None, other) == "skipped"
    no_text = label(source={"topic": "comments", "partition": 0, "offset": 5},
                    label="normal")
    assert await r.stage.handle(0, 1, 0, None, no_text) == "unresolved"
    assert r.shared.own.updates == 0
    ours = label(source={"topic": "comments", "partition": 0, "offset": 5}, label="normal",
                 text="a comment")
    r.sources.consumed(0, 5, "a comment")
    weight = r.baselines.global_.centroid.weight
    assert await r.stage.handle(0, 2, 0, None, ours) == "taught"
    assert r.embedder.calls == 1
    assert r.baselines.global_.centroid.weight == weight + 50


async def test_a_refused_label_is_dead_lettered_once_by_the_owning_replica() -> None:
    r = Replica()
    r.stage.input_partitions = 2
    assert await r.stage.handle(2, 4, 0, b"k", b"not json") == "refused"  # 2 mod 2 = 0: ours
    ((topic, key, value),) = r.sent
    assert topic == Settings().alerts.dead_letter_topic
    assert key == b"k"
    letter = orjson.loads(value)
    assert letter["reason"] == "invalid_json"
    assert letter["source"]["topic"] == "detector-feedback"
    assert (letter["source"]["partition"], letter["source"]["offset"]) == (2, 4)
    assert await r.stage.handle(1, 0, 0, None, label(label="maybe", id="x")) == "refused"
    assert len(r.sent) == 1  # partition 1 maps to input partition 1: another replica's
    assert r.stage.positions == {2: 5, 1: 1}


def test_label_positions_travel_in_the_state_record_and_are_restored() -> None:
    shared = SharedCentroid.around(Centroid.from_vectors(np.eye(DIM)[:2]), "r1", "base", MODEL)
    shared.feedback.update({0: 12, 3: 4})
    record = shared.record(0.3)
    raw = record.to_bytes("fb")
    assert orjson.loads(raw)["feedback"] == {"0": 12, "3": 4}
    back = ReplicaRecord.from_bytes(raw)
    assert back.feedback == {0: 12, 3: 4}
    fresh = SharedCentroid.around(Centroid.from_vectors(np.eye(DIM)[:2]), "r1", "base", MODEL)
    fresh.restore({"r1": back})
    assert fresh.feedback == {0: 12, 3: 4}
    plain = SharedCentroid.around(Centroid.from_vectors(np.eye(DIM)[:2]), "r2", "base", MODEL)
    assert "feedback" not in orjson.loads(plain.record(0.3).to_bytes("fb"))


async def test_every_label_that_changes_nothing_is_counted_with_its_reason() -> None:
    """skipped used to cover other topics, missing partitions, unknown ids and the
    owner's own uncached labels alike; each now has its reason (README: Operator labels)."""
    r = Replica()
    r.stage.input_partitions = 2
    r.score(unit(r.other * 2.0 + np.random.default_rng(5).normal(size=(1, DIM)) * 0.3))
    r.sources.consumed(0, 5, "t")

    def src(topic: str, partition: int) -> dict[str, object]:
        return {"topic": topic, "partition": partition, "offset": 5}

    cases = [
        (label(id="nobody", label="normal", text="t"), "skipped", "unknown_id"),
        (label(source=src("other", 0), label="normal", text="t"), "skipped", "other_topic"),
        (label(source=src("comments", 7), label="normal", text="t"), "skipped",
         "unknown_partition"),
        (label(source=src("comments", 1), label="normal", text="t"), "skipped",
         "other_replica"),
        (label(source=src("comments", 0), label="normal"), "unresolved", "not_cached"),
        (label(source=src("comments", 0), label="anomaly"), "unresolved", "not_cached"),
        (label(id="c0", label="anomaly"), "excluded", "cached"),
        (label(source=src("comments", 0), label="normal", text="t"), "taught", "text"),
        (b"{}", "refused", "wrong_schema"),
    ]
    for offset, (value, outcome, _) in enumerate(cases):
        assert await r.stage.handle(0, offset, 0, None, value) == outcome
    counted = {(s.labels["outcome"], s.labels["reason"]): s.value
               for f in r.metrics.registry.collect() for s in f.samples
               if s.name == "detector_feedback_labels_total"}
    assert counted == Counter((outcome, reason) for _, outcome, reason in cases)
    assert r.stage.book.precision.unresolved == 1
    assert r.shared.own.updates == 1  # only the text label taught
