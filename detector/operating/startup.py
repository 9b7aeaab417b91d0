"""The baselines the daemon starts with, from the calibration artifact or the seed file.
Pure: the artifact is already loaded and the seed already embedded.

From an artifact: the global centroid and threshold, the global reservoir's exemplars,
and, when the artifact was made with a key field, one base per key (centroid, own
threshold or none, exemplars) plus the pooled key threshold. From a seed file: the
global centroid and the configured threshold; the seed rows fill the global reservoir
(their references name the file and the line). The artifact must have been calibrated
for the configured scoring method and key field, since a threshold means something
only for the score it was chosen on; with no key field configured its per-key baselines
are not used.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from detector.calibration.artifact import CalibrationArtifact
from detector.calibration.sections import Keys
from detector.config import ScoringSettings
from detector.errors import ConfigError
from detector.model.baselines import Baseline, Baselines, KeyBase, Policy
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref, Reservoir


def check_artifact(artifact: CalibrationArtifact, scoring: ScoringSettings) -> None:
    """Refuse an artifact calibrated for another scoring method or key field."""
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


def build(scoring: ScoringSettings, centroid: Centroid, threshold: float, *,
          artifact: CalibrationArtifact | None = None,
          seed: tuple[npt.NDArray[np.float32], list[Ref]] | None = None,
          replica: str = "") -> Baselines:
    """The global baseline around `centroid` (shared with the state sync) and the key bases."""
    dimension = centroid.dimension
    reservoir = Reservoir(scoring.reservoir_size, dimension)
    bases: dict[str, KeyBase] = {}
    pooled: float | None = None
    samples = round(centroid.weight)
    if artifact is not None:
        check_artifact(artifact, scoring)
        reservoir.merge(artifact.decoded_exemplars(dimension))
        if artifact.keys is not None and scoring.key_field is not None:
            bases = _key_bases(artifact.keys, dimension)
            pooled = artifact.keys.pooled_threshold
        samples = artifact.counts.train
    elif seed is not None:
        for row, ref in zip(*seed, strict=True):
            reservoir.offer(row, ref)
    global_ = Baseline(None, centroid, reservoir, threshold, samples)
    return Baselines(global_, Policy.from_settings(scoring), replica=replica, key_threshold=pooled,
                     bases=bases)


def _key_bases(keys: Keys, dimension: int) -> dict[str, KeyBase]:
    out = {}
    for key, body in keys.baselines.items():
        exemplars = body.decoded_exemplars(dimension)
        out[str(key)] = KeyBase(
            Centroid.from_dict(body.centroid), body.threshold, body.counts.train,
            [(e.vector, e.ref) for e in exemplars])
    return out
