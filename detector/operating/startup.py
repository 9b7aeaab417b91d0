"""Where a detector starts from: the one place that decides the initial state, for `run`,
`replay`, `replay --compare` and the adoption of a newly published artifact.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from detector.calibration.artifact import CalibrationArtifact, check_compatible, load_artifact
from detector.calibration.samples import read_texts
from detector.calibration.sections import Keys
from detector.calibration.seed import ThresholdOrigin, seed_decision
from detector.config import FeedbackSettings, ScoringSettings, Settings
from detector.embedders.base import Embedder, Matrix
from detector.errors import ConfigError
from detector.model.baselines import Baseline, Baselines, KeyBase, Policy
from detector.model.centroid import Centroid
from detector.model.label_memory import LabelMemory, near_duplicate_radius, pairwise_q999
from detector.model.reference import Sample
from detector.model.reservoir import Ref, Reservoir
from detector.state.published import Published, parse, version_of

log = structlog.get_logger("detector.operating.startup")


def usable(artifact: CalibrationArtifact, settings: Settings, embedder: Embedder) -> None:
    """Refuse (`ConfigError`, saying why) an artifact made with another embedding model,
    dimension or text prefix, or calibrated for another scoring method or key field."""
    check_compatible(artifact, embedder.name, embedder.dimension,
                     settings.embedding.text_prefix)
    scoring = settings.scoring
    method = artifact.scoring.method
    if method != scoring.method:
        msg = (f"the calibration artifact's threshold was chosen for scoring.method "
               f"{method!r}, but scoring.method is {scoring.method!r}; recalibrate with "
               f"the configured method")
        raise ConfigError(msg)
    made_for = artifact.keys.field if artifact.keys is not None else None
    if made_for is not None and scoring.key_field is not None and made_for != scoring.key_field:
        msg = (f"the calibration artifact has per-key baselines for key field {made_for!r}, "
               f"but scoring.key_field is {scoring.key_field!r}")
        raise ConfigError(msg)


def published(settings: Settings, embedder: Embedder, raw: bytes | None) -> Published | None:
    """The artifact published on the state topic (`raw`, as the state store read it), if
    there is one this detector can use; one it cannot is logged and left out."""
    if raw is None:
        return None
    try:
        found = parse(raw)
        usable(found.artifact, settings, embedder)
    except ConfigError as exc:
        log.error("published calibration artifact refused at start; using the configured "
                  "one", reason=str(exc))
        return None
    return found


def in_force(settings: Settings, published: Published | None
             ) -> tuple[CalibrationArtifact | None, str | None]:
    """The artifact to start from and its version (None, None: no artifact at all)."""
    configured = None
    if settings.scoring.calibration_file is not None:
        configured = load_artifact(settings.scoring.calibration_file)
    if published is None:
        return configured, None if configured is None else version_of(configured)
    if configured is not None and configured.created_at > published.artifact.created_at:
        return configured, version_of(configured)
    return published.artifact, published.version


@dataclass(frozen=True, slots=True)
class InitialState:
    """The centroid and threshold the detector starts with, and where they came from."""

    centroid: Centroid
    threshold: float
    origin: str
    source: ThresholdOrigin = "fixed"  # calibration | seed (derived) | fixed (configured)
    artifact: CalibrationArtifact | None = None
    seed: tuple[Matrix, list[Ref]] | None = None  # embedded seed rows and their references
    version: str | None = None  # the artifact's version (detector.state.published)

    def baselines(self, settings: Settings, replica: str) -> Baselines:
        """The global baseline around `centroid`, with the artifact's or seed's exemplars,
        and the artifact's per-key bases."""
        memory = None
        if settings.feedback.enabled:
            memory = label_memory(settings.feedback, self.centroid.dimension,
                                  artifact=self.artifact,
                                  seed=None if self.seed is None else self.seed[0])
        # a derived seed threshold follows the centroid (the seed rows as the reference,
        # scored leave-one-out); a configured number is used as it is
        reference = None
        if self.seed is not None and self.source == "seed":
            reference = Sample(np.asarray(self.seed[0], dtype=np.float32), in_centroid=True)
        return build(settings.scoring, self.centroid, self.threshold, artifact=self.artifact,
                     seed=self.seed, replica=replica, calibration=self.version,
                     reference=reference, memory=memory)


def label_memory(feedback: FeedbackSettings, dimension: int, *,
                 artifact: CalibrationArtifact | None = None,
                 seed: Matrix | None = None) -> LabelMemory:
    """The memory of labelled comments, its radius `feedback.label_radius` or, for
    "auto", the near-duplicate radius of the model's own pairwise q0.999."""
    radius, origin = _radius(feedback, dimension, artifact, seed)
    log.info("label memory", radius=round(radius, 6), radius_from=origin,
             capacity=feedback.memory_size)
    return LabelMemory(feedback.memory_size, dimension, radius)


def _radius(feedback: FeedbackSettings, dimension: int, artifact: CalibrationArtifact | None,
            seed: Matrix | None) -> tuple[float, str]:
    if feedback.label_radius != "auto":
        return float(feedback.label_radius), "feedback.label_radius"
    q999: float | None = None
    origin = ""
    if artifact is not None:
        profile = artifact.metrics.similarity_profile
        if profile is not None and profile.pairwise.q999 is not None:
            q999, origin = profile.pairwise.q999, "artifact similarity_profile pairwise q0.999"
        else:
            rows = [e.vector for e in artifact.decoded_exemplars(dimension)]
            q999, origin = pairwise_q999(rows), "artifact exemplars pairwise q0.999"
    elif seed is not None:
        q999, origin = pairwise_q999(seed), "seed rows pairwise q0.999"
    if q999 is None:
        msg = ("feedback.label_radius: auto needs a calibration artifact with a similarity "
               "profile or at least 2 exemplars, or a seed file of at least 2 comments; set "
               "feedback.label_radius to a cosine instead")
        raise ConfigError(msg)
    return near_duplicate_radius(q999), origin


async def initial_state(settings: Settings, embedder: Embedder,
                        published: Published | None = None) -> InitialState:
    """The calibration artifact in force (`in_force`; it must be `usable`), else the seed
    file embedded now."""
    scoring = settings.scoring
    if scoring.calibration_file is not None or published is not None:
        artifact, version = in_force(settings, published)
        assert artifact is not None
        usable(artifact, settings, embedder)
        centroid = Centroid.from_dict(artifact.centroid, decay=scoring.decay)
        if scoring.threshold != "auto":
            log.warning("scoring.threshold is ignored: the calibration artifact's threshold "
                        "is used", configured=scoring.threshold, used=artifact.threshold)
        if published is not None and artifact is published.artifact:
            origin = published.origin
        else:
            assert scoring.calibration_file is not None
            origin = f"calibration:{_digest(scoring.calibration_file)}"
        return InitialState(centroid, artifact.threshold, origin, "calibration", artifact,
                            version=version)
    if scoring.seed_file is None:
        msg = "set scoring.calibration_file or scoring.seed_file: the detector needs a centroid"
        raise ConfigError(msg)
    return await _from_seed(scoring.seed_file, settings, embedder)


async def _from_seed(path: Path, settings: Settings, embedder: Embedder) -> InitialState:
    """Embed the seed file: its mean is the centroid (a base: version 0), its rows the
    global reservoir's first exemplars, its leave-one-out similarities the threshold."""
    texts = read_texts(path, settings.input)
    if not texts:
        msg = f"seed file {path} holds no usable comments"
        raise ConfigError(msg)
    scoring = settings.scoring
    size = settings.embedding.batch_size
    seeded = Centroid.empty(embedder.dimension, scoring.decay)
    rows = []
    for start in range(0, len(texts), size):
        for row in await embedder.embed(texts[start:start + size]):
            seeded.add(row)
            rows.append(row)
    centroid = Centroid(seeded.sum, seeded.weight, 0, scoring.decay)
    log.info("centroid seeded", file=str(path), samples=len(texts))
    matrix = np.stack(rows)
    threshold, source = seed_decision(matrix, path, scoring, embedder.name)
    # a prefix changes every vector: the shared state of another prefix is another base
    origin = f"seed:{_digest(path, settings.embedding.text_prefix)}"
    seed = (matrix, [Ref(f"seed:{path.name}", -1, i) for i in range(len(matrix))])
    return InitialState(centroid, threshold, origin, source, seed=seed)


def _digest(path: Path, extra: str = "") -> str:
    """A short content hash: shared state is reused only while its base is unchanged."""
    try:
        return hashlib.sha256(path.read_bytes() + extra.encode()).hexdigest()[:16]
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg) from None


def build(scoring: ScoringSettings, centroid: Centroid, threshold: float, *,
          artifact: CalibrationArtifact | None = None,
          seed: tuple[Matrix, list[Ref]] | None = None,
          replica: str = "", calibration: str | None = None,
          reference: Sample | None = None,
          memory: LabelMemory | None = None) -> Baselines:
    """The global baseline around `centroid` (shared with the state sync) and the key
    bases; `calibration` is the artifact's version (alerts name it)."""
    dimension = centroid.dimension
    reservoir = Reservoir(scoring.reservoir_size, dimension)
    bases: dict[str, KeyBase] = {}
    pooled: float | None = None
    samples = round(centroid.weight)
    if artifact is not None:
        reservoir.merge(artifact.decoded_exemplars(dimension))
        rows = artifact.reference_rows(dimension)
        if rows is not None and reference is None:
            reference = Sample(rows)  # held-out normals: the threshold follows the centroid
        if artifact.keys is not None and scoring.key_field is not None:
            bases = _key_bases(artifact.keys, dimension)
            pooled = artifact.keys.pooled_threshold
        samples = artifact.counts.train
    elif seed is not None:
        for row, ref in zip(*seed, strict=True):
            reservoir.offer(row, ref)
    global_ = Baseline(None, centroid, reservoir, threshold, samples, reference)
    return Baselines(global_, Policy.from_settings(scoring), replica=replica, key_threshold=pooled,
                     bases=bases, calibration=calibration, memory=memory)


def _key_bases(keys: Keys, dimension: int) -> dict[str, KeyBase]:
    out = {}
    for key, body in keys.baselines.items():
        exemplars = body.decoded_exemplars(dimension)
        rows = body.reference_rows(dimension)
        out[str(key)] = KeyBase(
            Centroid.from_dict(body.centroid), body.threshold, body.counts.train,
            [(e.vector, e.ref) for e in exemplars],
            None if rows is None else Sample(rows))
    return out
