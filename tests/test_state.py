"""Shared centroid state: merging replicas' contributions, and restarts through the
compacted state topic on a real broker."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from detector.embedders.local import LocalEmbedder
from detector.model.baselines import Baselines, Policy
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref
from detector.state.store import SharedCentroid, StateStore
from devtools.sample_data import stream
from tests.helpers import (
    NewTopic,
    RecordingEmbedder,
    detector_settings,
    metric,
    produce,
    running_detector,
    topic_configs,
    unique,
    wait_for,
)


def unit_rows(n: int, dim: int, seed: int) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, dim)) + 1.5
    out: npt.NDArray[np.float64] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def replica(base: Centroid, name: str) -> SharedCentroid:
    return SharedCentroid.around(base.copy(), name, "base-1", "m")


def learn(shared: SharedCentroid, rows: npt.NDArray[np.float64]) -> None:
    """Accept, in order, every row at least as similar as 0 to the centroid (threshold 0,
    no reference normals), counting it as this replica's contribution, as the daemon's
    baselines do."""
    shared.baseline.threshold = 0.0  # a bare centroid's baseline has none
    baselines = Baselines(shared.baseline, Policy(), replica=shared.replica)
    for i, row in enumerate(rows):
        baselines.judge(row, None, Ref("comments", 0, i))


class TestSharedCentroid:
    @pytest.mark.parametrize("decay", [1.0, 0.99])
    def test_replicas_agree_after_exchanging_contributions(self, decay: float) -> None:
        """two replicas learning different halves converge to the same centroid once each
        has applied the other's contribution."""
        base = Centroid.from_vectors(unit_rows(20, 8, 0), decay=decay)
        a, b = replica(base, "a"), replica(base, "b")
        learn(a, unit_rows(50, 8, 1))
        learn(b, unit_rows(50, 8, 2))
        assert a.apply(b.record(0.2))
        assert b.apply(a.record(0.2))
        np.testing.assert_allclose(a.centroid.sum, b.centroid.sum, rtol=1e-12)
        assert a.centroid.weight == pytest.approx(b.centroid.weight)
        assert a.centroid.version == b.centroid.version == 100

    def test_without_decay_the_merge_equals_a_single_replica(self) -> None:
        """with decay 1, merged replicas equal one replica that saw every comment."""
        base = Centroid.from_vectors(unit_rows(20, 8, 0))
        a, b, single = replica(base, "a"), replica(base, "b"), replica(base, "s")
        first, second = unit_rows(40, 8, 3), unit_rows(40, 8, 4)
        learn(a, first)
        learn(b, second)
        learn(single, np.concatenate([first, second]))
        a.apply(b.record(0.2))
        np.testing.assert_allclose(a.centroid.sum, single.centroid.sum, rtol=1e-12)

    def test_repeated_or_stale_records_are_applied_once(self) -> None:
        """a record seen twice, or an older one after a newer, changes nothing."""
        base = Centroid.from_vectors(unit_rows(5, 4, 0))
        a, b = replica(base, "a"), replica(base, "b")
        learn(b, unit_rows(3, 4, 1))
        old = b.record(0.2)
        learn(b, unit_rows(3, 4, 2))
        new = b.record(0.2)
        assert a.apply(new)
        snapshot = a.centroid.sum.copy()
        assert not a.apply(new)
        assert not a.apply(old)
        np.testing.assert_array_equal(a.centroid.sum, snapshot)

    def test_restore_adopts_our_own_contribution_and_skips_other_bases(self) -> None:
        """at start our own record continues our contribution; other bases are ignored."""
        base = Centroid.from_vectors(unit_rows(5, 4, 0))
        before = replica(base, "a")
        learn(before, unit_rows(10, 4, 1))
        foreign = SharedCentroid.around(base.copy(), "x", "other-base", "m")
        learn(foreign, unit_rows(3, 4, 2))
        after = replica(base, "a")
        ignored = after.restore({"a": before.record(0.2), "x": foreign.record(0.2)})
        assert ignored == ["x"]
        np.testing.assert_allclose(after.centroid.sum, before.centroid.sum, rtol=1e-12)
        assert after.own.updates == before.own.updates == after.centroid.version


@pytest.mark.kafka
class TestStateTopic:
    async def test_restart_resumes_the_centroid_it_stopped_with(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """the centroid published at shutdown is the one the next start resumes with."""
        topic = await new_topic()
        settings = detector_settings(kafka_bootstrap, topic, name=unique("det"),
                                     state={"enabled": True, "topic": unique("state"),
                                            "snapshot_interval_s": 3600, "replica_id": "r1"})
        await produce(kafka_bootstrap, topic, [
            (None, orjson.dumps({"text": c.text})) for c in stream(120, anomaly_rate=0.0)])
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 120,
                           what="the stream scored")
            version = metric(det.metrics, "detector_centroid_version")
            weight = metric(det.metrics, "detector_centroid_weight")
        assert version > 0, "normal comments updated the centroid"
        first = (await StateStore(settings).load())["r1"]
        assert first.contribution.updates == version

        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="assignment")
            assert metric(det.metrics, "detector_centroid_version") == version
            assert metric(det.metrics, "detector_centroid_weight") == weight
        second = (await StateStore(settings).load())["r1"]
        np.testing.assert_array_equal(second.contribution.sum, first.contribution.sum)

    async def test_state_topic_is_compacted(
        self, kafka_bootstrap: str, new_topic: NewTopic
    ) -> None:
        """the detector creates its state topic with cleanup.policy=compact."""
        settings = detector_settings(kafka_bootstrap, await new_topic(),
                                     state={"enabled": True, "topic": unique("state")})
        await StateStore(settings).ensure_topic()
        entries = await topic_configs(kafka_bootstrap, settings.state.topic)
        assert entries["cleanup.policy"] == "compact"
