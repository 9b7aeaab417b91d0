"""Adopting a calibration artifact published on the state topic, in a running replica.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import structlog

from detector.config import Settings
from detector.embedders.base import Embedder
from detector.errors import ConfigError
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.centroid import Centroid
from detector.operating import startup
from detector.operating.drift import DriftStage
from detector.state.published import Published, parse
from detector.state.sharing import SharedBaselines
from detector.state.store import SharedCentroid

log = structlog.get_logger("detector.operating.adoption")


class Adopter:
    """Validates published artifacts and has the owners of the state rebase on them."""

    def __init__(self, settings: Settings, baselines: Baselines, metrics: Metrics, *,
                 embedder: Embedder, version: str | None,
                 shared: SharedCentroid | None = None,
                 shared_baselines: SharedBaselines | None = None,
                 drift: DriftStage | None = None) -> None:
        self.settings = settings
        self.baselines = baselines
        self.metrics = metrics
        self.embedder = embedder
        self.version = version
        self.shared = shared
        self.shared_baselines = shared_baselines
        self.drift = drift

    def offer(self, raw: bytes) -> bool:
        """Adopt the published artifact in `raw` if it is new and valid; True if adopted."""
        try:
            published = parse(raw)
        except ConfigError as exc:
            return self._refuse(None, str(exc))
        if published.version == self.version:
            return False
        artifact = published.artifact
        scoring = self.settings.scoring
        try:
            startup.usable(artifact, self.settings, self.embedder)
            centroid = Centroid.from_dict(artifact.centroid, decay=scoring.decay)
            fresh = startup.build(scoring, centroid, artifact.threshold, artifact=artifact,
                                  replica=self.baselines.replica)
        except (ConfigError, ValueError, KeyError, TypeError) as exc:
            return self._refuse(published.version, str(exc))
        self._swap(published, fresh)
        return True

    def _refuse(self, version: str | None, reason: str) -> bool:
        self.metrics.calibrations.labels("refused").inc()
        log.error("published calibration artifact refused; keeping the one in force",
                  version=version, reason=reason, in_force=self.version)
        return False

    def _swap(self, published: Published, fresh: Baselines) -> None:
        held = self.baselines
        previous = (self.version, held.global_.threshold)
        dropped = held.rebase(fresh, published.version)
        self.version = published.version
        if self.shared is not None:
            self.shared.rebase(published.origin)
        if self.shared_baselines is not None:
            self.shared_baselines.rebase(published.origin)
        threshold = held.threshold_of(held.global_)[0]
        if self.drift is not None:
            self.drift.adopt(published.artifact)
        self.metrics.threshold.set(threshold)
        self.metrics.set_threshold_source("calibration")
        self.metrics.calibration.clear()
        self.metrics.calibration.labels(published.version).set(1)
        self.metrics.calibrations.labels("adopted").inc()
        log.info("calibration artifact adopted", version=published.version,
                 previous=previous[0], threshold=threshold, previous_threshold=previous[1],
                 key_baselines_dropped=dropped, published_at=published.published_at,
                 created_at=published.artifact.created_at)
