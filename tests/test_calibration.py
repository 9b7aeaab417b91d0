"""Calibration statistics and the artifact contract (pure, no broker)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from detector.calibration.artifact import (
    calibrate,
    check_compatible,
    load_artifact,
    save_artifact,
)
from detector.calibration.keys import calibrate_keys, fit
from detector.calibration.sections import Scoring
from detector.calibration.stats import (
    at_precision,
    best_f1,
    bootstrap_ci,
    fpr,
    pr_auc,
    roc_auc,
    roc_points,
    split,
    threshold_at_fpr,
)
from detector.errors import CalibrationError, ConfigError
from detector.model.reference import fpr_interval, rank
from detector.model.reservoir import Ref, encode_exemplars
from detector.state.published import version_of


def unit_cluster(n: int, seed: int, spread: float = 0.3) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    rows = np.ones((n, 16)) + spread * rng.normal(size=(n, 16))
    out: npt.NDArray[np.float64] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


class TestStatistics:
    def test_threshold_gives_the_target_fpr(self) -> None:
        """at most the target share of the normals falls below the chosen threshold."""
        sims = np.random.default_rng(0).normal(0.5, 0.1, 10_000)
        t = threshold_at_fpr(sims, 0.01)
        assert 0.009 <= fpr(sims, t) <= 0.01

    def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n(self) -> None:
        """the 95% interval brackets the point estimate and shrinks with more data."""
        rng = np.random.default_rng(1)
        small, large = rng.normal(0.5, 0.1, 500), rng.normal(0.5, 0.1, 20_000)
        lo_s, hi_s = bootstrap_ci(small, 0.05, 300, seed=0)
        lo_l, hi_l = bootstrap_ci(large, 0.05, 300, seed=0)
        assert lo_s <= threshold_at_fpr(small, 0.05) <= hi_s
        assert hi_l - lo_l < hi_s - lo_s

    def test_roc_auc_extremes(self) -> None:
        """perfect separation gives 1, identical distributions 0.5, reversed 0."""
        normal, anomalous = np.array([0.8, 0.9, 0.7]), np.array([0.1, 0.2])
        assert roc_auc(normal, anomalous) == 1.0
        assert roc_auc(anomalous, normal) == 0.0
        assert roc_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5

    def test_pr_auc_perfect_and_mixed(self) -> None:
        """average precision is 1 when every anomaly ranks first, lower otherwise."""
        assert pr_auc([0.8, 0.9], [0.1, 0.2]) == 1.0
        assert pr_auc([0.15, 0.9], [0.1, 0.2]) == pytest.approx((1 + 2 / 3) / 2)

    def test_best_f1_on_a_known_case(self) -> None:
        """F1 = 6/7 when the cut includes the anomaly at 0.55 and one normal at 0.5."""
        threshold, f1 = best_f1([0.5, 0.6, 0.7], [0.1, 0.2, 0.55])
        assert f1 == pytest.approx(6 / 7)
        assert 0.55 < threshold <= 0.6

    def test_precision_target(self) -> None:
        """the chosen cut reaches the precision asked for, or says it cannot."""
        threshold, precision, recall = at_precision([0.5, 0.6], [0.1, 0.2, 0.55], 1.0)
        assert precision == 1.0
        assert recall == pytest.approx(2 / 3)
        assert 0.2 < threshold <= 0.5
        with pytest.raises(CalibrationError, match="no threshold"):
            at_precision([0.01], [0.5], 0.99)


class TestAtScale:
    """The statistics stay exact and run in O(n) memory and O(n log n) time."""

    def test_bootstrap_matches_explicit_resampling(self) -> None:
        """the order-statistic bootstrap gives the interval that resampling n values
        with replacement gives (same distribution, independent draws)."""
        rng = np.random.default_rng(3)
        sims = rng.normal(0.5, 0.1, 2_000)
        k = int(0.02 * len(sims))
        resampled = np.sort(rng.choice(sims, size=(4_000, len(sims))), axis=1)[:, k]
        explicit = np.quantile(resampled, [0.025, 0.975])
        lo, hi = bootstrap_ci(sims, 0.02, 4_000, seed=0)
        width = explicit[1] - explicit[0]
        assert abs(lo - explicit[0]) < 0.1 * width
        assert abs(hi - explicit[1]) < 0.1 * width

    def test_roc_auc_equals_the_pairwise_definition_with_ties(self) -> None:
        """binary-search AUC = share of (anomaly, normal) pairs with the anomaly lower,
        ties counting half, on data with many ties."""
        rng = np.random.default_rng(4)
        normal = np.round(rng.normal(0.6, 0.1, 700), 2)
        anomaly = np.round(rng.normal(0.45, 0.1, 300), 2)
        pairs = anomaly[:, None] - normal[None, :]
        expected = float(np.mean(pairs < 0) + 0.5 * np.mean(pairs == 0))
        assert roc_auc(normal, anomaly) == pytest.approx(expected, abs=1e-12)

    def test_roc_points_equal_the_per_cut_rates(self) -> None:
        """every (FPR, TPR) point is the share of normals and anomalies alerted at one
        distinct cut, from (0, 0) to (1, 1), thinned only above max_points."""
        rng = np.random.default_rng(5)
        normal = np.round(rng.normal(0.6, 0.1, 400), 3)
        anomaly = np.round(rng.normal(0.4, 0.1, 100), 3)
        fpr, tpr = roc_points(normal, anomaly)
        cuts = np.unique(np.concatenate([normal, anomaly]))
        assert fpr.tolist() == [0.0, *[float(np.mean(normal <= c)) for c in cuts]]
        assert tpr.tolist() == pytest.approx([0.0, *[float(np.mean(anomaly <= c))
                                                     for c in cuts]])
        thin_fpr, thin_tpr = roc_points(normal, anomaly, max_points=50)
        assert len(thin_fpr) <= 50
        assert (thin_fpr[0], thin_tpr[0], thin_fpr[-1], thin_tpr[-1]) == (0, 0, 1, 1)

    def test_half_a_million_scores_in_bounded_memory(self) -> None:
        """threshold, 1,000-round bootstrap, ROC/PR AUC, best F1 and the ROC curve at
        500,000 held-out normals allocate a few copies of the scores, not rounds x n."""
        rng = np.random.default_rng(6)
        normal = rng.normal(0.6, 0.1, 500_000)
        anomaly = rng.normal(0.3, 0.1, 5_000)
        tracemalloc.start()
        try:
            threshold = threshold_at_fpr(normal, 0.01)
            lo, hi = bootstrap_ci(normal, 0.01, 1_000, seed=0)
            auc = roc_auc(normal, anomaly)
            pr_auc(normal, anomaly)
            best_f1(normal, anomaly)
            roc_points(normal, anomaly)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert lo <= threshold <= hi
        assert auc > 0.95
        assert peak < 20 * normal.nbytes  # 80 MB; resampling would need 4 GB


class TestCalibrate:
    def test_too_few_holdout_samples_is_a_clear_error(self) -> None:
        """a 1% FPR needs 300 held-out normals; fewer is refused with the number."""
        rows = unit_cluster(100, 0)
        with pytest.raises(CalibrationError, match="at least 300"):
            calibrate(rows[:50], rows[50:], None, model="m", dimension=16)

    def test_labelled_anomalies_give_auc_and_f1_threshold(self) -> None:
        """with anomalies, ROC/PR AUC and the best-F1 threshold are reported and used."""
        normal, anomalies = unit_cluster(800, 1), unit_cluster(50, 2, spread=3.0)
        train, hold = split(800, 0.5, seed=0)
        result = calibrate(normal[train], normal[hold], anomalies, model="m",
                           dimension=16, method="best_f1", target_fpr=0.01)
        metrics = result.artifact.metrics
        assert metrics.roc_auc is not None
        assert metrics.roc_auc > 0.9
        assert metrics.best_f1 is not None
        assert result.artifact.threshold == metrics.best_f1.threshold
        assert result.artifact.counts.to_json() == {"train": 400, "holdout": 400,
                                                    "anomalies": 50}

    def test_threshold_is_chosen_on_held_out_normals(self) -> None:
        """train and held-out splits are disjoint and cover every sample."""
        train, hold = split(1000, 0.3, seed=4)
        assert len(set(train) & set(hold)) == 0
        assert sorted([*train, *hold]) == list(range(1000))
        assert len(hold) == 300


class TestArtifact:
    def test_round_trip_and_compatibility(self, tmp_path: Path) -> None:
        """an artifact saved is loaded equal; another model or dimension is refused."""
        rows = unit_cluster(1000, 3)
        result = calibrate(rows[:600], rows[600:], None, model="m", dimension=16)
        path = tmp_path / "c.json"
        save_artifact(result.artifact, path)
        loaded = load_artifact(path)
        assert loaded == result.artifact
        check_compatible(loaded, "m", 16)
        with pytest.raises(ConfigError, match="recalibrate"):
            check_compatible(loaded, "m", 32)
        with pytest.raises(ConfigError, match="recalibrate"):
            check_compatible(loaded, "other", 16)

    def test_v2_artifact_is_written_again_byte_for_byte(self, tmp_path: Path) -> None:
        """a v2 artifact with anomaly metrics, kNN scoring, exemplars (with and without
        text) and per-key baselines (one pooled) loads into typed sections and is saved
        again to the same bytes, with the same version."""
        normal, anomalies = unit_cluster(800, 6), unit_cluster(40, 7, spread=3.0)
        train, hold = split(800, 0.5, seed=0)
        keys = ["a" if i % 2 else "b" for i in range(800)]
        refs = [Ref("t", 0, i, f"c{i}", "text" if i % 3 == 0 else None) for i in range(800)]
        fitted = fit(normal[train], [refs[i] for i in train], 50)
        result = calibrate(normal[train], normal[hold], anomalies, model="m", dimension=16,
                           method="target_precision", target_precision=0.5, bootstrap=20,
                           scoring={"method": "knn", "k": 3},
                           score=lambda rows: fitted.scores(rows, "knn", 3))
        per_key = calibrate_keys(normal[train], [keys[i] for i in train],
                                 [refs[i] for i in train], normal[hold],
                                 [keys[i] for i in hold], target_fpr=0.01,
                                 reservoir_size=20, min_train=10)
        artifact = result.artifact.with_baselines(
            encode_exemplars(fitted.reservoir.exemplars(), keep_text=True),
            per_key.to_json("meta.channel", 10, keep_text=True))
        first, second = tmp_path / "first.json", tmp_path / "second.json"
        save_artifact(artifact, first)
        loaded = load_artifact(first)
        save_artifact(loaded, second)
        assert second.read_bytes() == first.read_bytes()
        assert loaded.to_json() == orjson.loads(first.read_bytes())
        assert version_of(loaded) == version_of(artifact)
        assert loaded.keys is not None
        assert loaded.keys.baselines["a"].threshold is None  # too few held out: pooled
        assert loaded.keys.pooled_threshold is not None
        assert loaded.metrics.at_precision is not None
        assert loaded.scoring.method == "knn"
        assert any(e.ref.text == "text" for e in loaded.exemplars)
        assert any(e.ref.text is None for e in loaded.exemplars)
        assert [e.ref for e in loaded.decoded_exemplars(16)] == \
            [e.ref for e in fitted.reservoir.exemplars()]

    def test_v1_artifact_keeps_its_sections_as_written(self, tmp_path: Path) -> None:
        """a v1 artifact (no text prefix, exemplars, keys or similarity profile) loads, and
        its sections are written back as they were, absent keys absent."""
        v1 = {"schema": "detector.calibration/v1",
              "centroid": {"dimension": 2, "sum": [1.0, 0.5], "weight": 2.0, "version": 0,
                           "decay": 1.0},
              "threshold": 0.4, "method": "target_fpr", "target": 0.01,
              "model": {"name": "m", "dimension": 2},
              "counts": {"train": 700, "holdout": 300, "anomalies": 0},
              "metrics": {"holdout_fpr": 0.01, "threshold_ci95": [0.3, 0.5],
                          "target_fpr": 0.01,
                          "holdout_similarity": {"mean": 0.8, "min": 0.1, "p01": 0.3,
                                                 "p50": 0.85}},
              "created_at": "2025-01-01T00:00:00+00:00"}
        path = tmp_path / "v1.json"
        path.write_bytes(orjson.dumps(v1, option=orjson.OPT_INDENT_2))
        loaded = load_artifact(path)
        assert loaded.model.text_prefix == ""
        assert loaded.metrics.similarity_profile is None
        body = loaded.to_json()
        assert list(body) == ["centroid", "threshold", "method", "target", "model", "counts",
                              "metrics", "scoring", "created_at", "exemplars", "keys",
                              "schema"]
        for name in ("centroid", "model", "counts", "metrics"):
            assert orjson.dumps(body[name]) == orjson.dumps(v1[name])
        assert (body["scoring"], body["exemplars"], body["keys"]) == ({}, [], None)
        again = tmp_path / "again.json"
        save_artifact(loaded, again)
        assert load_artifact(again).to_json() == body

    def test_invalid_files_name_the_path(self, tmp_path: Path) -> None:
        """missing, non-JSON and foreign files are ConfigErrors naming the file."""
        with pytest.raises(ConfigError, match=r"nope\.json"):
            load_artifact(tmp_path / "nope.json")
        bad = tmp_path / "bad.json"
        bad.write_text('{"schema": "other"}')
        with pytest.raises(ConfigError, match=r"bad\.json"):
            load_artifact(bad)

    def test_unsupported_scoring_option_is_refused(self, tmp_path: Path) -> None:
        """an artifact asking for a centring vector is refused rather than silently ignored."""
        rows = unit_cluster(1000, 5)
        artifact = calibrate(rows[:600], rows[600:], None, model="m", dimension=16).artifact
        path = tmp_path / "centred.json"
        centred = Scoring(center=[0.0] * 16, method="centroid")
        save_artifact(artifact.model_copy(update={"scoring": centred}), path)
        with pytest.raises(ConfigError, match=r"centred\.json.*scoring\.center"):
            load_artifact(path)


class TestThresholdConfidence:
    def test_global_threshold_is_the_order_statistic_at_the_confidence(self) -> None:
        """target_fpr selection: the threshold is the `rank(n, target, confidence)`-th
        smallest held-out score; metrics record the rank, the expected FPR k/(n+1) and
        its 90 % interval; a higher confidence gives a lower (more conservative) one."""
        rows = unit_cluster(1600, 11)
        made = {c: calibrate(rows[:600], rows[600:], None, model="m", dimension=16,
                             bootstrap=20, confidence=c) for c in (0.5, 0.9)}
        sims = np.sort(made[0.5].holdout_sims)
        for confidence, result in made.items():
            k = rank(1000, 0.01, confidence)
            assert k is not None
            a = result.artifact
            assert a.threshold == float(sims[k - 1])
            promised = a.metrics.threshold_fpr
            assert promised is not None
            assert (promised.rank, promised.holdout, promised.confidence) == (
                k, 1000, confidence)
            assert promised.expected_fpr == k / 1001
            assert promised.fpr_interval == list(fpr_interval(1000, k))
            assert a.metrics.holdout_fpr == (k - 1) / 1000
        assert made[0.9].artifact.threshold < made[0.5].artifact.threshold

    def test_other_selections_record_no_promise(self) -> None:
        normal, anomalies = unit_cluster(800, 1), unit_cluster(50, 2, spread=3.0)
        result = calibrate(normal[:400], normal[400:], anomalies, model="m", dimension=16,
                           method="best_f1", bootstrap=20)
        assert result.artifact.metrics.threshold_fpr is None
        assert "threshold_fpr" not in result.artifact.to_json()["metrics"]

    def test_a_confidence_the_holdout_cannot_support_is_refused(self) -> None:
        """300 held-out normals give a 1 % threshold at 0.9 but not at 0.99."""
        rows = unit_cluster(600, 12)
        calibrate(rows[:300], rows[300:], None, model="m", dimension=16, bootstrap=20,
                  confidence=0.9)
        with pytest.raises(CalibrationError, match="threshold_confidence"):
            calibrate(rows[:300], rows[300:], None, model="m", dimension=16, bootstrap=20,
                      confidence=0.99)


class TestReferenceSample:
    def test_artifact_round_trip_with_reference_rows(self, tmp_path: Path) -> None:
        """The artifact keeps at most `reference_size` held-out rows (a subset drawn with
        the seed), globally and per key; they survive saving and loading to float16
        precision as unit float32 rows, and the file is written again byte for byte."""
        rows = unit_cluster(1600, 13)
        keys = ["a" if i % 4 else "b" for i in range(1600)]
        train, hold = np.arange(600), np.arange(600, 1600)
        result = calibrate(rows[train], rows[hold], None, model="m", dimension=16,
                           bootstrap=20, reference_size=300, seed=5)
        per_key = calibrate_keys(rows[train], [keys[i] for i in train],
                                 [Ref("t", 0, int(i)) for i in train], rows[hold],
                                 [keys[i] for i in hold], target_fpr=0.01, min_train=10,
                                 reference_size=200, seed=5)
        artifact = result.artifact.with_baselines([], per_key.to_json("k", 10,
                                                                      keep_text=False))
        path, again = tmp_path / "c.json", tmp_path / "again.json"
        save_artifact(artifact, path)
        loaded = load_artifact(path)
        save_artifact(loaded, again)
        assert again.read_bytes() == path.read_bytes()
        body = orjson.loads(path.read_bytes())
        assert set(body["reference"]) == {"rows", "count"}
        assert body["reference"]["count"] == 300
        kept = loaded.reference_rows(16)
        assert kept is not None
        assert kept.dtype == np.float32
        assert kept.shape == (300, 16)
        np.testing.assert_allclose(np.linalg.norm(kept, axis=1), 1.0, atol=1e-6)
        match = kept @ rows[hold].T
        assert np.all(match.max(axis=1) > 0.9999)  # each is a held-out row, to float16
        originals = rows[hold][match.argmax(axis=1)]
        np.testing.assert_allclose(kept, originals, atol=1e-3)
        assert len(set(match.argmax(axis=1).tolist())) == 300
        assert not np.any(np.max(kept @ rows[train].T, axis=1) > 0.99999)
        assert loaded.keys is not None
        for key, limit in (("a", 200), ("b", 200)):
            key_rows = loaded.keys.baselines[key].reference_rows(16)
            assert key_rows is not None
            own = rows[hold][[keys[i] == key for i in hold]]
            assert len(key_rows) == min(limit, len(own))
            assert np.all(np.max(key_rows @ own.T, axis=1) > 0.9999)

    def test_v2_artifact_without_reference_loads_byte_identically(self,
                                                                  tmp_path: Path) -> None:
        """An artifact made before issue 22 (no reference, no threshold promises) loads
        with none of them and is written back to the same bytes, the same version."""
        rows = unit_cluster(1600, 14)
        keys = ["a" if i % 2 else "b" for i in range(1600)]
        result = calibrate(rows[:600], rows[600:], None, model="m", dimension=16,
                           bootstrap=20)
        per_key = calibrate_keys(rows[:600], keys[:600], [Ref("t", 0, i) for i in range(600)],
                                 rows[600:], keys[600:], target_fpr=0.01, min_train=10)
        body = result.artifact.with_baselines([], per_key.to_json("k", 10,
                                                                  keep_text=False)).to_json()
        del body["reference"]
        del body["metrics"]["threshold_fpr"]
        body["keys"].pop("pooled_fpr", None)
        for baseline in body["keys"]["baselines"].values():
            for name in ("reference", "threshold_origin", "threshold_fpr"):
                baseline.pop(name, None)
        old = tmp_path / "old.json"
        old.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        loaded = load_artifact(old)
        assert loaded.reference is None
        assert loaded.reference_rows(16) is None
        assert loaded.metrics.threshold_fpr is None
        assert loaded.keys is not None
        assert all(b.reference_rows(16) is None and b.threshold_fpr is None
                   for b in loaded.keys.baselines.values())
        again = tmp_path / "again.json"
        save_artifact(loaded, again)
        assert again.read_bytes() == old.read_bytes()
        assert b'"reference"' not in again.read_bytes()
        assert version_of(loaded) == version_of(load_artifact(again))

    def test_reference_size_zero_keeps_none(self) -> None:
        rows = unit_cluster(1000, 15)
        result = calibrate(rows[:600], rows[600:], None, model="m", dimension=16,
                           bootstrap=20, reference_size=0)
        assert result.artifact.reference is None
        assert "reference" not in result.artifact.to_json()

    @pytest.mark.parametrize("where", ["global", "key"])
    def test_a_reference_that_does_not_hold_its_rows_is_refused(
        self, tmp_path: Path, where: str
    ) -> None:
        """A count that does not match the encoded rows (a truncated or foreign
        artifact) is a ConfigError naming the file and the section."""
        rows = unit_cluster(1000, 16)
        keys = ["a"] * 1000
        result = calibrate(rows[:600], rows[600:], None, model="m", dimension=16,
                           bootstrap=20)
        per_key = calibrate_keys(rows[:600], keys[:600], [Ref("t", 0, i) for i in range(600)],
                                 rows[600:], keys[600:], target_fpr=0.01, min_train=10)
        body = result.artifact.with_baselines([], per_key.to_json("k", 10,
                                                                  keep_text=False)).to_json()
        section = body["reference"] if where == "global" else \
            body["keys"]["baselines"]["a"]["reference"]
        section["count"] += 1
        path = tmp_path / "bad.json"
        path.write_bytes(orjson.dumps(body))
        with pytest.raises(ConfigError, match=r"bad\.json.*reference does not hold"):
            load_artifact(path)
