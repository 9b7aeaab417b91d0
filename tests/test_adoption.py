"""Unit tests of published calibration artifacts (detector.state.published) and their adoption
by a running replica's scorer (detector.operating.adoption), without a broker."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from detector.calibration.artifact import CalibrationArtifact, save_artifact
from detector.config import Settings
from detector.embedders.base import Matrix
from detector.errors import ConfigError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.centroid import Centroid
from detector.model.scorer import Scorer
from detector.operating import startup
from detector.operating.adoption import Adopter
from detector.state.published import encode, parse, version_of
from detector.state.sharing import Scope, SharedBaselines
from detector.state.store import SharedCentroid
from tests.helpers import DIM, MODEL, artifact, unit


class Model:
    """The embedder a replica runs: adoption reads only its name and dimension."""

    name = MODEL
    dimension = DIM

    async def embed(self, texts: Sequence[str]) -> Matrix:
        raise AssertionError("adoption embeds nothing")

    async def aclose(self) -> None:
        pass


def settings() -> Settings:
    return Settings(name="adopt-test")


def comment(offset: int) -> rec.Comment:
    return rec.Comment(rec.Source("comments", 0, offset, 0, None), "text", f"c{offset}")


class Replica:
    """A scorer with its shared state bookkeeping, started from one artifact."""

    def __init__(self, first: CalibrationArtifact) -> None:
        s = settings()
        centroid = Centroid.from_dict(first.centroid)
        self.baselines = startup.build(s.scoring, centroid, first.threshold, artifact=first,
                                       replica="r1", calibration=version_of(first))
        self.shared = SharedCentroid(self.baselines.global_, "r1", "calibration:old", MODEL)
        self.shared_baselines = SharedBaselines(
            self.baselines, Scope("r1", "calibration:old", MODEL, DIM))
        self.metrics = Metrics()
        self.scorer = Scorer.from_settings(s, rec.Context("d", "0", MODEL, DIM),
                                           baselines=self.baselines)
        self.adopter = Adopter(s, self.baselines, self.metrics, embedder=Model(),
                               version=version_of(first), shared=self.shared,
                               shared_baselines=self.shared_baselines)

    def alerts(self, rows: np.ndarray) -> list[dict[str, object]]:
        verdicts = self.scorer.score([(comment(i), r) for i, r in enumerate(rows)])
        return [orjson.loads(m[2]) for v in verdicts for m in v.messages]


def test_published_record_round_trips_with_a_stable_version() -> None:
    first = artifact(unit(np.ones(DIM)), 1)
    published = parse(encode("d", first))
    assert published.artifact == first
    assert published.version == version_of(first)
    assert published.origin == f"calibration:{version_of(first)}"
    with pytest.raises(ConfigError, match="not detector"):
        parse(orjson.dumps({"schema": "other"}))
    with pytest.raises(ConfigError, match="not JSON"):
        parse(b"{broken")
    body = orjson.loads(encode("d", first))
    del body["artifact"]["threshold"]
    with pytest.raises(ConfigError, match="invalid"):
        parse(orjson.dumps(body))


def test_a_running_replica_adopts_a_new_artifact_and_alerts_name_it() -> None:
    rng = np.random.default_rng(5)
    old_dir, new_dir = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    first, second = artifact(old_dir, 1), artifact(new_dir, 2)
    replica = Replica(first)
    shifted = unit(new_dir * 2.0 + rng.normal(size=(50, DIM)) * 0.5)
    before = replica.alerts(shifted)
    assert len(before) > 40  # the new population is anomalous under the old artifact
    assert {a["calibration"] for a in before} == {version_of(first)}

    assert replica.adopter.offer(encode("d", second))
    assert not replica.adopter.offer(encode("d", second))  # already in force
    assert replica.scorer.threshold == second.threshold
    assert replica.shared.base == f"calibration:{version_of(second)}"
    assert replica.shared_baselines.scope.base == replica.shared.base
    assert replica.shared.own.updates == 0
    after = replica.alerts(shifted)
    assert len(after) < 5
    sample = replica.metrics.registry.get_sample_value
    assert sample("detector_calibration_info", {"version": version_of(second)}) == 1
    assert sample("detector_calibration_info", {"version": version_of(first)}) is None
    assert sample("detector_calibrations_published_total", {"outcome": "adopted"}) == 1
    outliers = unit(old_dir * 2.0 + rng.normal(size=(50, DIM)) * 0.5)
    flagged = replica.alerts(outliers)
    assert flagged
    assert {a["calibration"] for a in flagged} == {version_of(second)}


def test_an_incompatible_or_broken_artifact_is_refused_and_the_current_one_kept() -> None:
    first = artifact(unit(np.ones(DIM)), 1)
    replica = Replica(first)
    other_model = artifact(unit(np.ones(DIM)), 3, model="another-model")
    assert not replica.adopter.offer(encode("d", other_model))
    assert not replica.adopter.offer(b'{"schema": "detector.calibration-published/v1"}')
    assert replica.scorer.threshold == first.threshold
    assert replica.baselines.calibration == version_of(first)
    assert replica.shared.base == "calibration:old"
    sample = replica.metrics.registry.get_sample_value
    assert sample("detector_calibrations_published_total", {"outcome": "refused"}) == 2


def test_in_force_prefers_the_published_artifact_unless_the_file_is_newer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = artifact(unit(np.ones(DIM)), 1)
    newer = first.model_copy(update={"created_at": "2999-01-01T00:00:00+00:00"})
    older = first.model_copy(update={"created_at": "2000-01-01T00:00:00+00:00"})
    path = tmp_path / "cal.json"
    save_artifact(first, path)
    s = Settings(scoring={"calibration_file": path})
    assert startup.in_force(s, parse(encode("d", newer))) == (newer, version_of(newer))
    assert startup.in_force(s, parse(encode("d", older))) == (first, version_of(first))
    assert startup.in_force(s, None) == (first, version_of(first))
    assert startup.in_force(Settings(), parse(encode("d", older))) == (older, version_of(older))
