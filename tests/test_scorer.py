"""The scorer on its own, without a broker: ordering, gating, encoding, dead letters."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import orjson

from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.alerts import ALERT_SCHEMA
from detector.model.baselines import Baseline, Baselines, Policy
from detector.model.centroid import Centroid
from detector.model.reservoir import Reservoir
from detector.model.scorer import Embedded, Encoding, Scorer, Verdict, record

CONTEXT = rec.Context("detector-test", "9.9.9", "test-model", 2)
ENCODING = Encoding("alerts", "scores", "dead", CONTEXT)


def unit(*values: float) -> npt.NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def comment(offset: int, text: str = "a comment") -> rec.Comment:
    source = rec.Source("comments", 0, offset, 1_700_000_000_000, f"k{offset}".encode())
    return rec.Comment(source, text, f"id-{offset}")


def scorer(centroid: Centroid | None = None, *, threshold: float = 0.5,
           update: bool = True, encoding: Encoding = ENCODING) -> Scorer:
    """A scorer of the global baseline of `centroid` alone, with a fixed threshold (no
    reference normals: the threshold is also the admission gate)."""
    centroid = centroid or Centroid.from_vectors([[1.0, 0.0]])
    baseline = Baseline(None, centroid, Reservoir(2000, centroid.dimension), threshold)
    return Scorer(Baselines(baseline, Policy(update=update)), encoding)


def outcome(v: Verdict) -> tuple[float | None, bool, bool]:
    return v.similarity, v.alert, v.updated


class TestBatchBoundaries:
    def test_cutting_the_same_items_differently_gives_the_same_verdicts_and_centroid(
            self) -> None:
        """Scoring items in one batch or in uneven batches gives identical verdicts,
        centroid and total update count."""
        rng = np.random.default_rng(7)
        base = unit(*([1.0] + [0.0] * 7))
        vectors = [unit(*(base + rng.normal(0, 0.6, 8))) for _ in range(40)]
        items: list[Embedded] = [(comment(i), v) for i, v in enumerate(vectors)]
        whole = scorer(Centroid.from_vectors([base]))
        cut = scorer(Centroid.from_vectors([base]))
        one = whole.score(items)
        pieces: list[Verdict] = []
        for start, end in ((0, 3), (3, 4), (4, 17), (17, 40)):
            pieces.extend(cut.score(items[start:end]))
        assert [outcome(v) for v in one] == [outcome(v) for v in pieces]
        assert any(v.alert for v in one)
        assert any(v.updated for v in one)
        np.testing.assert_array_equal(whole.centroid.sum, cut.centroid.sum)
        assert (whole.centroid.weight, whole.centroid.version) == (
            cut.centroid.weight, cut.centroid.version)
        own = whole.baselines.global_.own
        assert own.updates == cut.baselines.global_.own.updates == sum(v.updated for v in one)

    def test_a_confident_vector_updates_the_centroid_before_the_next_is_scored(self) -> None:
        """The second of two items in a batch is scored against the centroid the first
        one moved."""
        s = scorer(threshold=0.0)
        first, second = s.score([(comment(0), unit(0.0, 1.0)), (comment(1), unit(0.0, 1.0))])
        assert first.similarity is not None
        assert second.similarity is not None
        assert first.similarity < 1e-12
        assert second.similarity > 0.7


class TestGating:
    def test_similarity_exactly_at_the_gate_updates(self) -> None:
        """Without reference normals the gate is the threshold: a vector whose similarity
        equals it is accepted into the centroid and is not an alert."""
        s = scorer(threshold=0.5)
        (v,) = s.score([(comment(0), np.array([0.5, 0.75**0.5]))])
        assert v.similarity == 0.5
        assert v.updated
        assert not v.alert
        assert s.centroid.version == 1

    def test_similarity_just_below_the_gate_does_not_update(self) -> None:
        """A vector one ulp below the gate (the threshold) alerts and leaves the centroid."""
        s = scorer(threshold=0.5)
        x = float(np.nextafter(0.5, 0.0))
        (v,) = s.score([(comment(0), np.array([x, (1 - x * x) ** 0.5]))])
        assert v.similarity == x
        assert not v.updated
        assert v.alert
        assert s.centroid.version == 0

    def test_similarity_exactly_at_threshold_is_not_an_alert(self) -> None:
        """An alert needs a similarity strictly below the threshold."""
        s = scorer(threshold=0.5, update=False)  # the first must not move the centroid
        at, below = s.score([(comment(0), np.array([0.5, 0.75**0.5])),
                             (comment(1), np.array([float(np.nextafter(0.5, 0.0)), 0.8]))])
        assert (at.alert, below.alert) == (False, True)

    def test_update_switched_off_never_moves_the_centroid(self) -> None:
        """With update=False even an identical vector leaves the centroid as it was."""
        s = scorer(update=False)
        (v,) = s.score([(comment(0), unit(1.0, 0.0))])
        assert not v.updated
        assert (s.centroid.version, s.centroid.weight) == (0, 1.0)
        assert s.baselines.global_.own.updates == 0


class TestEncoding:
    def test_an_alert_carries_the_alert_schema_fields(self) -> None:
        """An anomalous comment emits an alert with text, similarity, threshold, source,
        centroid, model and detector, keyed by the input key."""
        s = scorer(threshold=0.5)
        (v,) = s.score([(comment(3, "odd text"), unit(0.0, 1.0))])
        assert v.alert
        topic, key, value = v.messages[0]
        alert = orjson.loads(value)
        assert (topic, key) == ("alerts", b"k3")
        assert alert["schema"] == ALERT_SCHEMA == "detector.alert/v2"
        assert (alert["id"], alert["text"]) == ("id-3", "odd text")
        assert abs(alert["similarity"]) < 1e-12
        assert alert["threshold"] == 0.5
        assert alert["source"] == {"topic": "comments", "partition": 0, "offset": 3,
                                   "timestamp": 1_700_000_000_000, "key": "k3"}
        assert alert["centroid"] == {"version": 0, "count": 1.0}
        assert alert["model"] == {"name": "test-model", "dimension": 2}
        assert alert["detector"] == {"name": "detector-test", "version": "9.9.9"}
        assert alert["detected_at"].endswith("Z")
        assert alert["method"] == "centroid"
        assert alert["baseline"] == {"scope": "global", "key": None, "comment_key": None,
                                     "threshold": 0.5, "threshold_source": "global",
                                     "centroid": {"version": 0, "count": 1.0}}
        assert alert["nearest"] == []  # nothing accepted yet: no exemplars

    def test_every_scored_comment_emits_a_score_when_a_scores_topic_is_set(self) -> None:
        """The score record says similarity, anomaly, centroid_updated and the centroid
        version after the batch; a normal comment emits no alert."""
        s = scorer(threshold=0.5)
        normal, odd = s.score([(comment(0), unit(1.0, 0.0)), (comment(1), unit(0.0, 1.0))])
        assert [m[0] for m in normal.messages] == ["scores"]
        assert [m[0] for m in odd.messages] == ["alerts", "scores"]
        score = orjson.loads(normal.messages[0][2])
        assert score["schema"] == rec.SCORE_SCHEMA
        assert (score["id"], score["anomaly"], score["centroid_updated"]) == ("id-0", False, True)
        assert score["similarity"] == 1.0
        assert score["threshold"] == 0.5
        assert score["centroid_version"] == 1
        assert orjson.loads(odd.messages[1][2])["anomaly"] is True

    def test_without_a_scores_topic_a_normal_comment_emits_nothing(self) -> None:
        """With scores off, a normal comment's verdict has no message at all."""
        s = scorer(encoding=Encoding("alerts", None, "dead", CONTEXT))
        (v,) = s.score([(comment(0), unit(1.0, 0.0))])
        assert v.messages == []


class TestDeadLetters:
    def test_a_refused_text_becomes_a_dead_letter_in_its_place(self) -> None:
        """A refused text between two vectors gets a dead-letter verdict in order, is not
        scored and does not touch the centroid."""
        s = scorer(threshold=0.5)
        bad = comment(1)
        letter = rec.DeadLetter(bad.source, "rejected:DataInspectionFailed", "refused", None)
        verdicts = s.score([(comment(0), unit(1.0, 0.0)), (bad, letter),
                            (comment(2), unit(1.0, 0.0))])
        assert [v.source.offset for v in verdicts] == [0, 1, 2]
        refused = verdicts[1]
        assert refused.similarity is None
        assert refused.dead_letter is letter
        assert not refused.alert
        assert not refused.updated
        ((topic, key, value),) = refused.messages
        body = orjson.loads(value)
        assert (topic, key) == ("dead", b"k1")
        assert body["schema"] == rec.DEAD_LETTER_SCHEMA
        assert (body["reason"], body["error"]) == ("rejected:DataInspectionFailed", "refused")
        assert body["source"]["offset"] == 1
        assert s.centroid.version == 2  # the two vectors moved it, the refused text did not

    def test_a_batch_of_only_refused_texts_scores_nothing(self) -> None:
        """A batch whose every text was refused yields only dead letters."""
        s = scorer()
        source = comment(0).source
        (v,) = s.score([(comment(0), rec.DeadLetter(source, "rejected", "no", None))])
        assert v.messages[0][0] == "dead"
        assert v.similarity is None

    def test_recording_a_dead_letter_counts_it_by_reason_prefix(self) -> None:
        """record counts a dead letter under the reason before the colon, not as scored."""
        metrics = Metrics()
        s = scorer()
        source = comment(0).source
        record(metrics, s.refuse(rec.DeadLetter(source, "rejected:TooLarge", "x", None)))
        assert metrics.registry.get_sample_value(
            "detector_dead_letters_total", {"reason": "rejected"}) == 1.0
        assert metrics.registry.get_sample_value("detector_similarity_count") == 0.0


class TestOwnContribution:
    def test_accepted_vectors_are_counted_as_this_replicas_contribution(self) -> None:
        """The global baseline's own contribution (what state sync publishes) is the move
        of S and w its accepted vectors made, and their number."""
        s = scorer(threshold=0.3)
        before_sum, before_weight = s.centroid.sum.copy(), s.centroid.weight
        s.score([(comment(0), unit(1.0, 0.1)), (comment(1), unit(0.0, 1.0)),
                 (comment(2), unit(1.0, 0.2))])
        own = s.baselines.global_.own
        assert own.updates == 2
        np.testing.assert_allclose(own.sum, s.centroid.sum - before_sum)
        np.testing.assert_allclose(own.sum, unit(1.0, 0.1) + unit(1.0, 0.2))
        assert own.weight == s.centroid.weight - before_weight

    def test_nothing_is_counted_when_nothing_was_accepted(self) -> None:
        """A call in which no vector updated the centroid leaves the contribution at zero."""
        s = scorer(threshold=0.5)
        s.score([(comment(0), unit(0.0, 1.0))])
        own = s.baselines.global_.own
        assert (own.updates, own.weight) == (0, 0.0)
        assert not own.sum.any()


class TestExplanations:
    def test_an_alert_names_the_nearest_accepted_comments(self) -> None:
        """After normal comments were accepted, an alert lists the 3 nearest of them with
        similarity and source, most similar first, and no text by default."""
        s = scorer(threshold=0.5)
        s.score([(comment(i), unit(1.0, 0.1 * i)) for i in range(5)])
        (v,) = s.score([(comment(9, "odd"), unit(0.3, 1.0))])
        alert = orjson.loads(v.messages[0][2])
        near = alert["nearest"]
        assert [n["source"]["offset"] for n in near] == [4, 3, 2]
        assert near[0]["similarity"] >= near[1]["similarity"] >= near[2]["similarity"]
        assert near[0]["source"] == {"topic": "comments", "partition": 0, "offset": 4,
                                     "id": "id-4"}
        assert all("text" not in n for n in near)
        assert alert["centroid_similarity"] == alert["similarity"]

    def test_a_key_baseline_judges_its_own_comments(self) -> None:
        """With per-key baselines a key's comment is judged against its key's centroid and
        the alert says so."""
        from detector.model.baselines import KeyBase

        g = Baseline(None, Centroid.from_vectors([[1.0, 0.0]]), Reservoir(10, 2), 0.5)
        base = KeyBase(Centroid.from_vectors([[0.0, 1.0]]), 0.9, 100)
        b = Baselines(g, Policy(key_min_samples=10), bases={"shop": base})
        s = Scorer(b, ENCODING)
        keyed = rec.Comment(comment(1).source, "text", "id-1", key="shop")
        (ok,) = s.score([(keyed, unit(0.1, 1.0))])
        assert not ok.alert  # the global baseline would alert: cosine to (1, 0) is 0.1
        (odd,) = s.score([(keyed, unit(1.0, 0.2))])
        alert = orjson.loads(odd.messages[0][2])
        assert alert["baseline"]["scope"] == "key"
        assert alert["baseline"]["key"] == "shop"
        assert alert["baseline"]["threshold_source"] == "key"
        assert alert["threshold"] == 0.9
