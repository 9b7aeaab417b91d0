"""Unit tests of the daemon's feedback stage (detector.operating.labels), without a broker: which
replica applies a label, what it teaches, where refused labels go, and the label
positions kept in the state record."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.embedders.base import Matrix
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.centroid import Centroid
from detector.model.scorer import Scorer
from detector.operating import startup
from detector.operating.labels import FeedbackStage
from detector.state.store import ReplicaRecord, SharedCentroid
from tests.test_adoption import DIM, MODEL, artifact, unit


class FixedEmbedder:
    """Embeds every text as one fixed unit vector."""

    name = MODEL
    dimension = DIM

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls += 1
        return np.tile(self.vector.astype(np.float32), (len(texts), 1))

    async def aclose(self) -> None:
        pass


def label(**body: object) -> bytes:
    return orjson.dumps({"schema": "detector.feedback/v1", **body})


class Replica:
    def __init__(self, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.direction, self.other = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
        first = artifact(self.direction, seed)
        s = Settings(name="fb", feedback={"enabled": True, "weight": 50})
        centroid = Centroid.from_dict(first.centroid)
        self.baselines = startup.build(s.scoring, centroid, first.threshold, artifact=first,
                                       replica="r1")
        self.shared = SharedCentroid(self.baselines.global_, "r1", "base", MODEL)
        self.scorer = Scorer.from_settings(s, rec.Context("d", "0", MODEL, DIM),
                                           baselines=self.baselines)
        self.sent: list[rec.Message] = []
        self.metrics = Metrics()
        self.embedder = FixedEmbedder(self.other)
        self.stage = FeedbackStage(s, self.baselines, self.metrics, embedder=self.embedder,
                                   emit=self.sent.extend,
                                   context=rec.Context("d", "0", MODEL, DIM),
                                   shared=self.shared)
        self.stage.owned = lambda: frozenset({TopicPartition("comments", 0)})

    def score(self, rows: np.ndarray, start: int = 0) -> list[float]:
        items = [(rec.Comment(rec.Source("comments", 0, start + i, 0, None), "t",
                              f"c{start + i}"), row) for i, row in enumerate(rows)]
        verdicts = self.scorer.score(items)
        self.stage.observe(items, verdicts)
        return [v.similarity or 0.0 for v in verdicts]


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
        "detector_feedback_labels_total", {"outcome": "taught"}) == 1


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
    other = label(source={"topic": "comments", "partition": 1, "offset": 5}, label="normal",
                  text="a comment")
    assert await r.stage.handle(0, 0, 0, None, other) == "skipped"
    no_text = label(source={"topic": "comments", "partition": 0, "offset": 5},
                    label="normal")
    assert await r.stage.handle(0, 1, 0, None, no_text) == "skipped"
    assert r.shared.own.updates == 0
    ours = label(source={"topic": "comments", "partition": 0, "offset": 5}, label="normal",
                 text="a comment")
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
