"""Unit tests of the daemon's drift stage (detector.operating.drift) and of `Outbox.emit`, which
publishes its events without holding back offsets."""

from __future__ import annotations

import functools

import numpy as np
import orjson

from detector.calibration.stats import similarity_profile
from detector.config import DriftSettings, Settings
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.baselines import Baseline, Baselines, Policy
from detector.model.centroid import Centroid
from detector.model.drift import DRIFT_SCHEMA, DriftConfig, DriftMonitor, Observation, Reference
from detector.model.reference import Sample
from detector.model.reservoir import Reservoir
from detector.model.scorer import Scorer
from detector.operating.drift import DriftStage, live_reference
from tests.helpers import (
    DIM,
    MODEL,
    TP,
    FakeCommitter,
    FakeSink,
    artifact,
    outbox,
    unit,
    wait_for,
    work,
)


class Stage:
    """A scorer on one artifact and a drift stage fed with its verdicts."""

    def __init__(self, direction: np.ndarray, window: int = 200) -> None:
        from detector.model.centroid import Centroid
        from detector.operating import startup

        first = artifact(direction, 1)
        s = Settings(name="drift-test")
        centroid = Centroid.from_dict(first.centroid)
        baselines = startup.build(s.scoring.model_copy(update={"update": False}), centroid,
                                  first.threshold, artifact=first)
        self.scorer = Scorer.from_settings(s, rec.Context("d", "0", MODEL, DIM),
                                           baselines=baselines)
        self.sent: list[rec.Message] = []
        self.metrics = Metrics()
        self.now = 1000.0
        self.stage = DriftStage.from_artifact(
            DriftSettings(enabled=True, window_records=window, window_s=60.0), first,
            topic="drift", emit=self.sent.extend, metrics=self.metrics,
            clock=lambda: self.now)
        self.offset = 0

    def feed(self, rows: np.ndarray, key: str | None = None) -> None:
        items = []
        for row in rows:
            source = rec.Source("comments", 0, self.offset, 0, None)
            items.append((rec.Comment(source, "t", f"c{self.offset}", key), row))
            self.offset += 1
        self.stage.observe(items, self.scorer.score(items))

    def events(self) -> list[dict[str, object]]:
        return [orjson.loads(value) for _, _, value in self.sent]


def test_a_shift_publishes_a_drift_event_and_a_stationary_stream_none() -> None:
    rng = np.random.default_rng(11)
    direction, other = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    stage = Stage(direction)
    for _ in range(20):  # 4,000 stationary records: 20 windows
        stage.feed(unit(direction * 2.0 + rng.normal(size=(200, DIM)) * 0.5))
    assert stage.sent == []
    sample = stage.metrics.registry.get_sample_value
    assert sample("detector_drift_windows_closed_total") == 20
    shifted = unit(direction + other * 1.5 + rng.normal(size=(200, DIM)) * 0.3)
    stage.feed(shifted, key="site-a")
    events = stage.events()
    assert [(e["schema"], e["scope"], e["key"]) for e in events] == [
        (DRIFT_SCHEMA, "global", None), (DRIFT_SCHEMA, "key", "site-a")]
    assert events[0]["moved"]
    assert [(m[0], m[1]) for m in stage.sent] == [("drift", None), ("drift", b"site-a")]
    assert sample("detector_drift_events_total", {
        "scope": "global", "moved": "+".join(events[0]["moved"]),  # type: ignore[arg-type]
        "classification": events[0]["low_scoring"]["classification"]}) == 1  # type: ignore[index]


def test_tick_closes_an_idle_window_by_time_and_publishes_its_event() -> None:
    rng = np.random.default_rng(12)
    direction, other = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    stage = Stage(direction, window=10_000)
    stage.feed(unit(direction + other * 1.5 + rng.normal(size=(150, DIM)) * 0.3), key="k")
    stage.stage.tick()
    assert stage.sent == []  # the window is younger than window_s
    stage.now += 61
    stage.stage.tick()
    scopes = sorted(str(e["scope"]) for e in stage.events())
    assert scopes == ["global", "key"]
    assert {m[1] for m in stage.sent} == {None, b"k"}
    assert {e["window"]["closed_by"] for e in stage.events()} == {"time"}  # type: ignore[index]


async def test_emitted_messages_are_acknowledged_but_hold_back_no_offset() -> None:
    sink, committer = FakeSink(), FakeCommitter()
    box = outbox(sink, committer)
    box.deliver([work(box, 0)])
    box.emit([("drift", None, b"event")])
    await wait_for(lambda: len(sink.sent) == 1)
    await box.commit()
    assert committer.commits == [{TP: 1}]  # the unacknowledged event holds nothing back
    assert box.pending()  # but it is awaited at shutdown
    sink.ack_all()
    await box.drain()
    assert not box.pending()
    assert box.metrics.registry.get_sample_value("detector_alerts_total") == 0.0


class TestLikeWithLike:
    """Windows are tested against the reference normals as the baseline scores them now:
    the detector's own learning is not drift, a population shift still is (issue 22)."""

    @staticmethod
    def population(rng: np.random.Generator, n: int, degrees: float) -> np.ndarray:
        centre = np.zeros(64)
        centre[0], centre[1] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        rows = centre * 3.2 + rng.normal(size=(n, 64)) * 0.15
        out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return out

    def setup(self, *, live: bool) -> tuple[DriftMonitor, Baselines, np.random.Generator]:
        rng = np.random.default_rng(5)
        train, held = self.population(rng, 1000, 0), self.population(rng, 2000, 0)
        centroid = Centroid.from_vectors(train)
        sims = held @ centroid.vector
        baseline = Baseline(None, centroid, Reservoir(10, 64), None, 1000,
                            Sample(held.astype(np.float32)))
        held_baselines = Baselines(baseline, Policy(update=False, explain=0))
        threshold = held_baselines.threshold_of(baseline)[0]
        stored = Reference.from_calibration(threshold, len(held), float(np.mean(
            sims < threshold)), similarity_profile(sims, held))
        monitor = DriftMonitor(stored, DriftConfig(window_records=500, window_s=None),
                               live=functools.partial(live_reference, held_baselines)
                               if live else None)
        return monitor, held_baselines, rng

    def feed(self, monitor: DriftMonitor, baselines: Baselines, rows: np.ndarray,
             start: float) -> list[dict[str, object]]:
        threshold = baselines.threshold_of(baselines.global_)[0]
        events = []
        for i, row in enumerate(rows):
            sim = float(row @ baselines.global_.centroid.vector)
            events += monitor.observe(None, Observation(sim, sim < threshold), start + i)
        return events

    def learn_a_tilt(self, baselines: Baselines) -> None:
        """What the daemon's own learning can do: the centroid tilted 8 degrees by a
        contribution three times its weight (another replica's, labels, a biased gate)."""
        pull = np.zeros(64)
        pull[0], pull[1] = np.cos(np.radians(8)), np.sin(np.radians(8))
        baselines.global_.centroid.merge(pull * 3000.0, 3000.0, 3000)
        baselines.refresh(baselines.global_, force=True)

    def test_the_stored_profile_reads_the_detectors_own_learning_as_drift(self) -> None:
        monitor, baselines, rng = self.setup(live=False)
        self.learn_a_tilt(baselines)
        events = self.feed(monitor, baselines, self.population(rng, 5000, 0), 0.0)
        assert events  # the failure this issue names: a stationary stream, events

    def test_a_live_reference_does_not_and_a_population_shift_still_raises_events(
            self) -> None:
        monitor, baselines, rng = self.setup(live=True)
        self.learn_a_tilt(baselines)
        assert self.feed(monitor, baselines, self.population(rng, 5000, 0), 0.0) == []
        shifted = self.feed(monitor, baselines, self.population(rng, 2000, 14), 1e4)
        assert shifted
        assert shifted[0]["scope"] == "global"
