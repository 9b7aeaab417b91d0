"""The seed-derived threshold: leave-one-out statistics, its confidence interval, and a
start that fits two backends whose similarity scales differ (the local model and the
fake API narrowed into an e5-like cone), where a fixed 0.2 fails one of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import structlog.testing
from pydantic import SecretStr

from detector.calibration.seed import (
    fixed_threshold_problem,
    loo_similarities,
    quantile_ci,
    seed_threshold,
)
from detector.config import Settings, load_settings
from detector.embedders import Embedder, build_embedder
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from detector.metrics import Metrics
from detector.model.centroid import Centroid
from detector.operating import startup
from devtools.fakeapi import FakeEmbeddingServer
from devtools.sample_data import stream
from tests.helpers import metric

KEY = "sk-seed"
COMMENTS = stream(1000, anomaly_rate=0.05, seed=11)  # held out: not the seed file's texts


def cluster(n: int, d: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.ones(d) + spread * rng.standard_normal((n, d))
    unit: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


class TestLeaveOneOut:
    def test_matches_scoring_each_row_against_the_others(self) -> None:
        """the closed form equals building the centroid of the other rows for each row."""
        rows = cluster(40, 8, 0.8, seed=1)
        brute = [Centroid.from_vectors(np.delete(rows, i, axis=0)).similarity(rows[i])
                 for i in range(len(rows))]
        np.testing.assert_allclose(loo_similarities(rows), brute, atol=1e-12)

    def test_a_seed_text_does_not_judge_itself(self) -> None:
        """an outlier scores lower left out than against a centroid that includes it."""
        rows = np.vstack([cluster(9, 8, 0.1, seed=2), cluster(1, 8, 3.0, seed=3)])
        with_itself = Centroid.from_vectors(rows).similarity(rows[-1])
        assert loo_similarities(rows)[-1] < with_itself - 0.05

    def test_needs_two_rows(self) -> None:
        """one row has no others to be scored against."""
        with pytest.raises(ValueError, match="at least 2"):
            loo_similarities(np.ones((1, 4)))


class TestQuantileInterval:
    def test_covers_the_true_quantile_at_its_level(self) -> None:
        """over 400 uniform samples of 300, the 95% interval of the 5% quantile holds 0.05
        in at least 93% of them (distribution-free order statistics)."""
        rng = np.random.default_rng(7)
        covered = 0
        for _ in range(400):
            low, high = quantile_ci(np.sort(rng.uniform(size=300)), 0.05)
            assert low is not None
            assert high is not None
            covered += low <= 0.05 <= high
        assert covered >= 0.93 * 400

    def test_an_undeterminable_bound_is_none(self) -> None:
        """300 samples cannot bound the 1% quantile from below at 95% (0.99^300 > 2.5%)."""
        sims = np.sort(np.random.default_rng(3).uniform(size=300))
        low, high = quantile_ci(sims, 0.01)
        assert low is None
        assert high is not None
        assert sims[2] <= high <= sims[10]

    def test_seed_threshold_leaves_target_share_below(self) -> None:
        """the threshold has at most target_fpr of the LOO similarities below it."""
        rows = cluster(500, 16, 0.7, seed=5)
        derived = seed_threshold(rows, 0.02)
        sims = loo_similarities(rows)
        assert np.mean(sims < derived.threshold) <= 0.02
        assert derived.ci_low is not None
        assert derived.ci_high is not None
        assert derived.ci_low <= derived.threshold <= derived.ci_high
        assert (derived.loo_min, derived.loo_max) == (sims.min(), sims.max())
        assert fixed_threshold_problem(derived.threshold, derived) is None
        assert "below every" in str(fixed_threshold_problem(derived.loo_min - 0.01, derived))
        assert "above every" in str(fixed_threshold_problem(derived.loo_max + 0.01, derived))


class TestSettings:
    def test_auto_is_the_default_and_a_number_is_fixed(self) -> None:
        """threshold defaults to auto; a number (also from the environment) is accepted;
        anything else and a target_fpr outside (0, 0.5) are refused."""
        assert Settings().scoring.threshold == "auto"
        assert Settings().scoring.target_fpr == 0.01
        assert load_settings(None, scoring={"threshold": "0.3"}).scoring.threshold == 0.3
        with pytest.raises(ConfigError, match=r"scoring\.threshold"):
            load_settings(None, scoring={"threshold": "high"})
        with pytest.raises(ConfigError, match=r"scoring\.target_fpr"):
            load_settings(None, scoring={"target_fpr": 0.0})

    def test_metrics_say_whether_the_threshold_is_calibrated(self) -> None:
        """one gauge says calibrated (1/0), one per source says which one is in force."""
        metrics = Metrics()
        metrics.set_threshold_source("seed")
        assert metric(metrics, "detector_threshold_calibrated") == 1
        assert metric(metrics, "detector_threshold_source", {"source": "seed"}) == 1
        assert metric(metrics, "detector_threshold_source", {"source": "fixed"}) == 0
        metrics.set_threshold_source("fixed")
        assert metric(metrics, "detector_threshold_calibrated") == 0
        assert metric(metrics, "detector_threshold_source", {"source": "fixed"}) == 1


@dataclass
class Outcome:
    threshold: float
    source: str
    caught: int  # planted anomalies alerted
    planted: int
    false_alerts: int  # ordinary comments alerted
    normals: int

    @property
    def recall(self) -> float:
        return self.caught / self.planted

    @property
    def false_rate(self) -> float:
        return self.false_alerts / self.normals


async def start_and_score(settings: Settings, embedder: Embedder) -> Outcome:
    """The detector's start (seed file embedded now) and the held-out stream scored."""
    state = await startup.initial_state(settings, embedder)
    texts = [c.text for c in COMMENTS]
    vectors = np.vstack([await embedder.embed(texts[i:i + 10]) for i in range(0, 1000, 10)])
    alerts = state.centroid.similarity(vectors) < state.threshold
    planted = np.array([c.anomalous for c in COMMENTS])
    return Outcome(state.threshold, state.source, int((alerts & planted).sum()),
                   int(planted.sum()), int((alerts & ~planted).sum()), int((~planted).sum()))


@pytest.fixture(scope="module")
def e5_like() -> Iterator[FakeEmbeddingServer]:
    """The fake API with every vector sharing a large component: all similarities
    0.85-0.95, like multilingual-e5 behind an OpenAI-compatible server."""
    with FakeEmbeddingServer(api_key=KEY, common=2.0) as server:
        yield server


def e5_settings(server: FakeEmbeddingServer, **scoring: object) -> Settings:
    return load_settings(
        "config/detector.yaml", scoring=scoring,
        embedding={"backend": "openai", "model": "multilingual-e5-small", "dimension": 384,
                   "base_url": server.openai_base_url, "api_key": SecretStr(KEY)})


class TestTwoScales:
    async def test_seed_derived_thresholds_fit_both_backends(
        self, local_embedder: LocalEmbedder, e5_like: FakeEmbeddingServer
    ) -> None:
        """with scoring.threshold auto each backend gets a threshold on its own scale and
        alerts on planted anomalies far more often than on ordinary comments."""
        local = await start_and_score(load_settings("config/detector.yaml"), local_embedder)
        settings = e5_settings(e5_like)
        embedder = build_embedder(settings)
        try:
            with structlog.testing.capture_logs() as logs:
                e5 = await start_and_score(settings, embedder)
        finally:
            await embedder.aclose()
        print(f"local: {local}\ne5-like: {e5}")  # the figures the report quotes (-s)
        assert (local.source, e5.source) == ("seed", "seed")
        assert 0.1 < local.threshold < 0.5
        assert e5.threshold > 0.8, "the e5-like scale is far above the local one"
        for outcome in (local, e5):
            assert outcome.recall >= 0.3
            assert outcome.false_rate <= 0.05
            assert outcome.recall >= 5 * outcome.false_rate
        [derived] = [e for e in logs if e["event"].startswith("threshold derived from the seed")]
        assert derived["threshold"] == round(e5.threshold, 4)
        assert derived["ci_high"] is not None
        assert derived["ci_high"] >= derived["threshold"]
        assert derived["seed_samples"] == 300

    async def test_a_fixed_threshold_off_the_scale_warns_and_misses_everything(
        self, local_embedder: LocalEmbedder, e5_like: FakeEmbeddingServer
    ) -> None:
        """the old fixed 0.2 still suits the local model, but on the e5-like scale it is
        below every seed similarity: a warning at start, and not one alert."""
        local = await start_and_score(load_settings("config/detector.yaml",
                                                    scoring={"threshold": 0.2}), local_embedder)
        assert local.source == "fixed"
        assert local.recall >= 0.9
        settings = e5_settings(e5_like, threshold=0.2)
        embedder = build_embedder(settings)
        try:
            with structlog.testing.capture_logs() as logs:
                e5 = await start_and_score(settings, embedder)
        finally:
            await embedder.aclose()
        assert (e5.source, e5.threshold) == ("fixed", 0.2)
        assert e5.caught == e5.false_alerts == 0
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1
        assert "below every seed text's similarity" in warnings[0]["event"]
        assert warnings[0]["seed_derived"] > 0.8
