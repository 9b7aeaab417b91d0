"""The drift stage of the daemon: feeds scored comments to the `DriftMonitor` and hands its
events to the outbox. No I/O of its own: publishing is the `emit` callable's (the
`Outbox`), time is the `clock`'s.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog

from detector.calibration.artifact import CalibrationArtifact
from detector.config import DriftSettings
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.drift import DriftConfig, DriftMonitor, Observation, Reference
from detector.model.scorer import Embedded, Verdict

log = structlog.get_logger("detector.operating.drift")


def live_reference(baselines: Baselines, key: str | None, stored: Reference
                   ) -> Reference | None:
    """The drift reference of a stream as its judging baseline scores its reference
    normals now, so the detector's own learning is not read as drift; None (the stored
    reference) where the baseline has none derived or scores by kNN (windows hold
    centroid similarities)."""
    if baselines.policy.method != "centroid":
        return None
    held = None if key is None else baselines.keys.get(key)
    judging = held is not None and held.samples >= baselines.policy.key_min_samples
    baseline = held if judging and held is not None else baselines.global_
    threshold, _ = baselines.threshold_of(baseline)
    derived = baseline.derived
    if derived is None:
        return None
    return stored.rescored(threshold, derived.rank, derived.scores)

Emit = Callable[[list[rec.Message]], None]


def drift_config(settings: DriftSettings) -> DriftConfig:
    return DriftConfig(window_records=settings.window_records, window_s=settings.window_s,
                       false_alarm_budget=settings.false_alarm_budget,
                       budget_windows=settings.budget_windows, max_keys=settings.max_keys,
                       sample_size=settings.sample_size)


class DriftStage:
    """Observes scored batches, publishes drift events, counts windows and events."""

    def __init__(self, monitor: DriftMonitor, *, topic: str, emit: Emit, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.monitor = monitor
        self.topic = topic
        self.emit = emit
        self.metrics = metrics
        self.clock = clock
        self._windows = 0
        self._evicted = 0

    @classmethod
    def from_artifact(cls, settings: DriftSettings, artifact: CalibrationArtifact, *,
                      topic: str, emit: Emit, metrics: Metrics,
                      clock: Callable[[], float] = time.time,
                      baselines: Baselines | None = None) -> DriftStage:
        """A stage testing against `artifact`; a `ValueError` when it has no profile.
        With `baselines`, each window is tested against the reference normals as the
        baseline judging its stream scores them now (`live_reference`)."""
        reference = Reference.from_artifact(artifact.to_json())
        live = None if baselines is None else functools.partial(live_reference, baselines)
        return cls(DriftMonitor(reference, drift_config(settings), live=live), topic=topic,
                   emit=emit, metrics=metrics, clock=clock)

    def observe(self, items: Sequence[Embedded], verdicts: Sequence[Verdict]) -> None:
        """Add one scored batch (the scorer's input and its verdicts, in order)."""
        now = self.clock()
        events: list[dict[str, Any]] = []
        for (comment, embedded), verdict in zip(items, verdicts, strict=True):
            if verdict.similarity is None or isinstance(embedded, rec.DeadLetter):
                continue  # dead-lettered: not scored
            source = comment.source
            obs = Observation(verdict.similarity, verdict.alert,
                              embedding=embedded if verdict.alert else None,
                              ref={"topic": source.topic, "partition": source.partition,
                                   "offset": source.offset, "id": comment.id})
            events += self.monitor.observe(comment.key, obs, now)
        self._publish(events)

    def tick(self) -> None:
        """Close the windows older than `drift.window_s`."""
        self._publish(self.monitor.tick(self.clock()))

    async def run_ticks(self, interval_s: float = 1.0) -> None:
        """Tick every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.tick()

    def adopt(self, artifact: CalibrationArtifact) -> None:
        """Test against a newly adopted calibration from now on (keeps the old reference,
        with a warning, when the artifact has no similarity profile)."""
        try:
            reference = Reference.from_artifact(artifact.to_json())
        except (ValueError, KeyError) as exc:
            log.warning("drift keeps the previous calibration's reference", error=str(exc))
            return
        dropped = self.monitor.adopt(reference)
        log.info("drift reference replaced", windows_dropped=dropped)

    def _publish(self, events: list[dict[str, Any]]) -> None:
        monitor = self.monitor
        self.metrics.drift_windows.inc(monitor.windows_closed - self._windows)
        self._windows = monitor.windows_closed
        self.metrics.drift_keys_evicted.inc(monitor.keys_evicted - self._evicted)
        self._evicted = monitor.keys_evicted
        if not events:
            return
        messages: list[rec.Message] = []
        for event in events:
            moved = "+".join(event["moved"])
            kind = event["low_scoring"]["classification"]
            self.metrics.drift_events.labels(event["scope"], moved, kind).inc()
            log.warning("drift", scope=event["scope"], key=event["key"], moved=moved,
                        classification=kind, window=event["window"]["index"],
                        alert_rate=round(event["alert_rate"]["observed"], 4),
                        expected=round(event["alert_rate"]["expected"], 4))
            key = None if event["key"] is None else str(event["key"]).encode()
            messages.append((self.topic, key, orjson.dumps(event)))
        self.emit(messages)
