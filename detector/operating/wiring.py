"""The stages that keep a running detector current, wired for `detector run`: the drift
stage (detector.operating.drift) and its timer, the feedback reader (detector.operating.labels), and
the adoption of calibration artifacts published on the state topic (detector.operating.adoption).

`Operating` is an async context manager: entered once the pipeline exists, it starts
the drift timer and the feedback reader and stops them on exit; `on_scored` is what the
pipeline calls with every scored batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from detector.calibration.artifact import CalibrationArtifact, check_compatible
from detector.config import Settings
from detector.embedders import Embedder
from detector.errors import ConfigError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.scorer import Embedded, Verdict
from detector.operating import startup
from detector.operating.adoption import Adopter
from detector.operating.drift import DriftStage
from detector.operating.labels import FeedbackStage
from detector.state.published import Published, parse
from detector.state.sharing import SharedBaselines
from detector.state.store import SharedCentroid, StateStore, StateSync
from detector.stream.delivery import Outbox
from detector.stream.pipeline import Pipeline

log = structlog.get_logger("detector.operating.wiring")


def published_at_start(settings: Settings, embedder: Embedder, raw: bytes | None
                       ) -> Published | None:
    """The artifact published on the state topic, if there is one this detector can use;
    one it cannot is logged and left out (the configured artifact or seed is used)."""
    if raw is None:
        return None
    try:
        published = parse(raw)
        check_compatible(published.artifact, embedder.name, embedder.dimension,
                         settings.embedding.text_prefix)
        startup.check_artifact(published.artifact, settings.scoring)
    except ConfigError as exc:
        log.error("published calibration artifact refused at start; using the configured "
                  "one", reason=str(exc))
        return None
    return published


def drift_stage(settings: Settings, artifact: CalibrationArtifact | None, outbox: Outbox,
                metrics: Metrics) -> DriftStage | None:
    """The drift stage when `drift.enabled`; it needs an artifact with a similarity
    profile to compare with (a `ConfigError` otherwise)."""
    if not settings.drift.enabled:
        return None
    if artifact is None:
        msg = ("drift.enabled needs a calibration artifact (scoring.calibration_file or one "
               "published on the state topic): a seed file has no reference to test against")
        raise ConfigError(msg)
    try:
        return DriftStage.from_artifact(settings.drift, artifact,
                                        topic=settings.alerts.drift_topic, emit=outbox.emit,
                                        metrics=metrics)
    except (ValueError, KeyError) as exc:
        msg = f"drift.enabled cannot use the calibration artifact: {exc}"
        raise ConfigError(msg) from None


@dataclass
class Operating:
    """The drift and feedback stages of one replica (either may be off)."""

    drift: DriftStage | None = None
    labels: FeedbackStage | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def on_scored(self) -> Callable[[list[Embedded], list[Verdict]], None] | None:
        observers = [s.observe for s in (self.drift, self.labels) if s is not None]
        if not observers:
            return None

        def observe_all(items: list[Embedded], verdicts: list[Verdict]) -> None:
            for observe in observers:
                observe(items, verdicts)

        return observe_all

    def attach(self, pipeline: Pipeline) -> Operating:
        """Labels are applied by the owner of a partition: the pipeline knows which."""
        if self.labels is not None:
            self.labels.owned = lambda: pipeline.owned
        return self

    async def __aenter__(self) -> Operating:
        if self.drift is not None:
            self._tasks.append(asyncio.create_task(self.drift.run_ticks(), name="drift"))
        if self.labels is not None:
            self._tasks.append(asyncio.create_task(self.labels.run(), name="feedback"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def build(settings: Settings, *, artifact: CalibrationArtifact | None, version: str | None,
          held: Baselines, metrics: Metrics, embedder: Embedder, outbox: Outbox,
          context: rec.Context, shared: SharedCentroid, baselines: SharedBaselines,
          sync: StateSync | None, store: StateStore | None) -> Operating:
    """The stages the settings switch on, and the adopter of published artifacts (told of
    them by the state store)."""
    drift = drift_stage(settings, artifact, outbox, metrics)
    labels = None
    if settings.feedback.enabled:
        labels = FeedbackStage(settings, held, metrics, embedder=embedder, emit=outbox.emit,
                               context=context, shared=shared if sync is not None else None)
    if version is not None:
        metrics.calibration.labels(version).set(1)
    if store is not None:
        adopter = Adopter(settings, held, metrics, model=embedder.name, version=version,
                          shared=shared, shared_baselines=baselines, sync=sync, drift=drift)
        store.on_calibration = adopter.offer
    return Operating(drift, labels)
