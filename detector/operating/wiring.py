"""The stages that keep a running detector current, wired for `detector run`: the drift
stage (detector.operating.drift) and its timer, the feedback reader
(detector.operating.labels), and the adoption of calibration artifacts published on the
state topic (detector.operating.adoption; the state sync hands them to `Operating.adopt`).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition

from detector.calibration.artifact import CalibrationArtifact
from detector.config import Settings
from detector.embedders import Embedder
from detector.errors import ConfigError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.scorer import Embedded, Verdict
from detector.operating.adoption import Adopter
from detector.operating.drift import DriftStage
from detector.operating.labels import FeedbackStage
from detector.operating.sources import InputRecords
from detector.state.label_records import SharedLabels
from detector.state.sharing import SharedBaselines
from detector.state.store import SharedCentroid
from detector.stream.delivery import Outbox
from detector.stream.pipeline import Pipeline


class Owned:
    """The input partitions this replica owns, as its pipeline sees them. The stages that
    ask are built before the pipeline (which calls them with every scored batch), so the
    pipeline is bound once it exists; until then nothing is owned."""

    def __init__(self) -> None:
        self._pipeline: Pipeline | None = None

    def bind(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def __call__(self) -> frozenset[TopicPartition]:
        return frozenset() if self._pipeline is None else self._pipeline.owned

    async def committed(self, tp: TopicPartition) -> int | None:
        """The consumer group's committed position of `tp` (None: none yet)."""
        if self._pipeline is None:
            return None
        position: int | None = await self._pipeline.consumer.committed(tp)
        return position


def drift_stage(settings: Settings, artifact: CalibrationArtifact | None, outbox: Outbox,
                metrics: Metrics, baselines: Baselines | None = None) -> DriftStage | None:
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
                                        metrics=metrics, baselines=baselines)
    except (ValueError, KeyError) as exc:
        msg = f"drift.enabled cannot use the calibration artifact: {exc}"
        raise ConfigError(msg) from None


@dataclass
class Operating:
    """The drift and feedback stages and the adopter of one replica (any may be off)."""

    drift: DriftStage | None = None
    labels: FeedbackStage | None = None
    adopter: Adopter | None = None
    owned: Owned = field(default_factory=Owned)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def adopt(self) -> Callable[[bytes], object] | None:
        """What the state sync hands newly published artifacts to (None: not sharing)."""
        return None if self.adopter is None else self.adopter.offer

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
        self.owned.bind(pipeline)
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
          sharing: bool, labels: SharedLabels | None = None) -> Operating:
    """The stages the settings switch on and, when the state is shared (`sharing`), the
    adopter of published artifacts (the state sync is handed `Operating.adopt`);
    `labels` is the label memory the feedback stage keeps (shared when `sharing`)."""
    drift = drift_stage(settings, artifact, outbox, metrics, held)
    owned = Owned()
    feedback = None
    if settings.feedback.enabled:
        feedback = FeedbackStage(settings, held, metrics, embedder=embedder, emit=outbox.emit,
                                 context=context, owned=owned,
                                 shared=shared if sharing else None, labels=labels,
                                 sources=InputRecords(settings, owned.committed))
    if version is not None:
        metrics.calibration.labels(version).set(1)
    adopter = None
    if sharing:
        adopter = Adopter(settings, held, metrics, embedder=embedder, version=version,
                          shared=shared, shared_baselines=baselines, drift=drift)
    return Operating(drift, feedback, adopter, owned)
