"""Labels that mean what they say: judging with a label memory (detector.model.baselines
consults detector.model.label_memory before the threshold), the feedback stage's checks
that a label names a record this detector consumed, and the memory records shared
through the state topic (detector.state.label_records). No broker."""

from __future__ import annotations

import numpy as np
import orjson

from detector.config import Settings
from detector.io.records import Position
from detector.model.label_memory import LabelMemory, near_duplicate_radius
from detector.operating import startup
from detector.state.label_records import LabelRecord, SharedLabels, record_key, source_of_key
from tests.helpers import DIM, MODEL, Replica, artifact, label, unit

SRC = {"topic": "comments", "partition": 0, "offset": 0}


def far_rows(r: Replica, n: int, seed: int) -> np.ndarray:
    rows: np.ndarray = unit(r.other * 2.0 + np.random.default_rng(seed).normal(size=(n, DIM))
                            * 0.3)
    return rows


class TestJudgingWithAMemory:
    def test_a_normal_label_suppresses_the_comment_and_teaches_nothing(self) -> None:
        r = Replica()
        row = r.other[None, :]
        [first] = r.verdicts(row)
        assert first.alert
        r.baselines.memory.remember(Position("comments", 0, 0), "normal", row[0])  # type: ignore[union-attr]
        version = r.baselines.global_.centroid.version
        [again] = r.verdicts(row, start=1)
        assert not again.alert
        assert again.judged is not None
        assert again.judged.label is not None
        assert again.judged.reason == "suppressed by label comments/0/0"
        assert not again.updated
        assert r.baselines.global_.centroid.version == version
        assert again.messages == []  # no alert (and scores are not published here)

    def test_an_anomaly_label_makes_a_near_duplicate_alert_whatever_its_score(self) -> None:
        r = Replica()
        normal = unit(r.direction[None, :] * 3 + np.random.default_rng(2).normal(size=(1, DIM))
                      * 0.1)
        [plain] = r.verdicts(normal)
        assert not plain.alert
        r.baselines.memory.remember(Position("comments", 0, 0), "anomaly", normal[0])  # type: ignore[union-attr]
        version = r.baselines.global_.centroid.version
        [forced] = r.verdicts(normal, start=1)
        assert forced.alert
        assert not forced.updated
        assert r.baselines.global_.centroid.version == version
        alert = orjson.loads(forced.messages[0][2])
        assert alert["schema"] == "detector.alert/v2"
        assert alert["label"]["kind"] == "anomaly"
        assert alert["label"]["source"] == SRC
        assert alert["label"]["reason"] == "matches labelled anomaly comments/0/0"
        assert plain.messages == []

    def test_a_revoked_label_leaves_the_threshold_to_decide_again(self) -> None:
        r = Replica()
        row = far_rows(r, 1, 3)
        r.verdicts(row)
        assert r.baselines.memory is not None
        r.baselines.memory.remember(Position("comments", 0, 0), "normal", row[0])
        assert r.baselines.memory.forget(Position("comments", 0, 0))
        [again] = r.verdicts(row, start=1)
        assert again.alert
        assert again.judged is not None
        assert again.judged.label is None

    def test_the_radius_is_the_models_own_scale(self) -> None:
        first = artifact(unit(np.random.default_rng(9).normal(size=DIM)), 9)
        memory = startup.label_memory(Settings().feedback, DIM, artifact=first)
        profile = first.metrics.similarity_profile
        assert profile is not None
        assert profile.pairwise.q999 is not None
        assert memory.radius == near_duplicate_radius(profile.pairwise.q999)
        fixed = startup.label_memory(Settings(feedback={"label_radius": 0.97}).feedback, DIM,
                                     artifact=first)
        assert fixed.radius == 0.97
        seeded = startup.label_memory(Settings().feedback, DIM,
                                      seed=unit(np.random.default_rng(1).normal(size=(50, DIM))))
        assert 0.5 < seeded.radius < 1


class TestFeedbackStage:
    async def test_a_normal_label_stops_the_comment_from_alerting_again(self) -> None:
        r = Replica()
        rows = far_rows(r, 20, 4)
        assert all(v.alert for v in r.verdicts(rows))
        for i in range(20):
            src = {"topic": "comments", "partition": 0, "offset": i}
            assert await r.stage.handle(0, i, 0, None, label(source=src, label="normal",
                                                             text="t")) == "taught"
        assert not any(v.alert for v in r.verdicts(rows, start=100))

    async def test_a_label_whose_text_is_not_the_cached_comments_is_dead_lettered(self) -> None:
        r = Replica()
        r.verdicts(far_rows(r, 1, 5))
        outcome = await r.stage.handle(0, 0, 0, None, label(source=SRC, label="normal",
                                                            text="something else"))
        assert outcome == "refused"
        assert orjson.loads(r.sent[-1][2])["reason"] == "text_mismatch"
        assert len(r.baselines.memory or []) == 0
        assert r.shared.own.updates == 0
        assert r.metrics.registry.get_sample_value("detector_feedback_labels_total", {
            "outcome": "refused", "reason": "text_mismatch"}) == 1

    async def test_an_uncached_text_label_is_checked_against_the_consumed_record(self) -> None:
        r = Replica()
        src = {"topic": "comments", "partition": 0, "offset": 7}
        r.sources.consumed(0, 7, "what was said")
        assert await r.stage.handle(0, 0, 0, None, label(source=src, label="normal",
                                                         text="what was not")) == "refused"
        assert orjson.loads(r.sent[-1][2])["reason"] == "text_mismatch"
        r.sources.positions[0] = 9  # consumed, but the record is gone
        gone = {"topic": "comments", "partition": 0, "offset": 8}
        assert await r.stage.handle(0, 1, 0, None, label(source=gone, label="normal",
                                                         text="x")) == "refused"
        assert orjson.loads(r.sent[-1][2])["reason"] == "source_unavailable"
        assert await r.stage.handle(0, 2, 0, None, label(source=src, label="anomaly",
                                                         text="what was said")) == "excluded"
        assert Position("comments", 0, 7) in (r.baselines.memory or [])

    async def test_a_label_beyond_the_committed_position_waits_then_is_refused(self) -> None:
        r = Replica()
        later = {"topic": "comments", "partition": 0, "offset": 30}
        never = {"topic": "comments", "partition": 0, "offset": 40}
        assert await r.stage.handle(0, 0, 0, None, label(source=later, label="normal",
                                                         text="soon")) == "waiting"
        assert await r.stage.handle(0, 1, 0, None, label(source=never, label="normal",
                                                         text="never")) == "waiting"
        r.sources.consumed(0, 30, "soon")
        await r.stage.recheck()
        assert r.metrics.registry.get_sample_value("detector_feedback_labels_total", {
            "outcome": "taught", "reason": "text"}) == 1
        r.clock[0] = 31.0
        await r.stage.recheck()
        assert orjson.loads(r.sent[-1][2])["reason"] == "not_consumed"
        for i in range(3):  # at most max_pending (2) wait: the oldest is refused
            far = {"topic": "comments", "partition": 0, "offset": 50 + i}
            await r.stage.handle(0, 2 + i, 0, None, label(source=far, label="normal",
                                                          text="x"))
        assert r.metrics.registry.get_sample_value("detector_feedback_labels_total", {
            "outcome": "refused", "reason": "not_consumed"}) == 2

    async def test_revoke_forgets_the_label_and_its_teaching(self) -> None:
        r = Replica()
        rows = far_rows(r, 1, 6)
        r.verdicts(rows)
        assert await r.stage.handle(0, 0, 0, None, label(source=SRC, label="normal")) == (
            "taught")
        weight = r.baselines.global_.centroid.weight
        assert await r.stage.handle(0, 1, 0, None, label(source=SRC, label="revoke")) == (
            "revoked")
        assert r.baselines.global_.centroid.weight == weight - 50
        assert len(r.baselines.memory or []) == 0
        [again] = r.verdicts(rows, start=1)
        assert again.alert

    async def test_a_later_label_of_the_same_comment_replaces_the_earlier(self) -> None:
        r = Replica()
        rows = far_rows(r, 1, 7)
        r.verdicts(rows)
        await r.stage.handle(0, 0, 0, None, label(source=SRC, label="normal"))
        await r.stage.handle(0, 1, 0, None, label(source=SRC, label="anomaly"))
        memory = r.baselines.memory
        assert memory is not None
        assert len(memory) == 1
        [match] = memory.match(rows)
        assert match is not None
        assert match.kind == "anomaly"


class TestSharedLabels:
    def test_a_record_round_trips_and_its_key_names_the_comment(self) -> None:
        vector = unit(np.random.default_rng(1).normal(size=DIM)).astype(np.float32)
        source = Position("comments", 3, 17)
        record = LabelRecord(source, "anomaly", vector, "r1", MODEL, "alice")
        back = LabelRecord.from_bytes(record.to_bytes("det", "now"))
        assert back.source == source
        assert back.kind == "anomaly"
        assert back.labeller == "alice"
        assert np.array_equal(back.vector, vector)
        assert source_of_key("det", record_key("det", source)) == source
        assert source_of_key("det", b"det/r1/k/x") is None

    def test_replicas_apply_each_others_records_and_their_own_only_at_start(self) -> None:
        def labels(replica: str) -> SharedLabels:
            return SharedLabels(LabelMemory(10, DIM, 0.99), replica, MODEL, sharing=True)

        a, b = labels("a"), labels("b")
        source, vector = Position("comments", 0, 1), np.eye(DIM)[0]
        a.remember(source, "normal", vector)
        [(_, record)] = a.take()
        assert record is not None
        raw = record.to_bytes("det", "now")
        assert not a.apply(source, raw)  # its own, read back
        assert b.apply(source, raw)
        assert source in b.memory
        a.forget(source)
        assert a.take() == [(source, None)]
        assert not a.apply(source, None)  # its own tombstone, read back
        assert b.apply(source, None)
        assert source not in b.memory
        restarted = labels("a")
        assert restarted.apply(source, raw, restoring=True)
        other_model = SharedLabels(LabelMemory(10, DIM, 0.99), "c", "another-model")
        assert not other_model.apply(source, raw)
