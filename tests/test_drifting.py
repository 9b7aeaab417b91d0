"""Unit tests of the daemon's drift stage (detector.operating.drift) and of `Outbox.emit`, which
publishes its events without holding back offsets."""

from __future__ import annotations

import numpy as np
import orjson

from detector.config import DriftSettings, Settings
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.drift import DRIFT_SCHEMA
from detector.model.scorer import Scorer
from detector.operating.drift import DriftStage
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
