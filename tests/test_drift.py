"""Unit tests of detector.model.drift: the tests, the windows and the classification."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from detector.calibration.artifact import calibrate
from detector.calibration.stats import PROFILE_LEVELS, fpr, similarity_profile, threshold_at_fpr
from detector.model.drift import (
    DRIFT_SCHEMA,
    DriftConfig,
    DriftMonitor,
    Observation,
    Reference,
    beta_binomial_sf,
    ks_below,
)

DIM = 64


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return out


class World:
    """Comments as unit vectors around topic directions: cosines to the centroid and
    between comments in the ranges a sentence encoder gives (about 0.2-0.7 and 0.1-0.5)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.topic = unit(self.rng.normal(size=DIM))
        self.other = unit(self.rng.normal(size=DIM))

    def population(self, n: int, direction: np.ndarray) -> np.ndarray:
        return unit(direction * 2.2 + self.rng.normal(size=(n, DIM)) * 0.5)

    def normal(self, n: int) -> np.ndarray:
        return self.population(n, self.topic)

    def shifted(self, n: int) -> np.ndarray:
        return self.population(n, unit(self.topic + 1.2 * self.other))

    def campaign(self, n: int) -> np.ndarray:
        base = unit(self.rng.normal(size=DIM))
        return unit(base + self.rng.normal(size=(n, DIM)) * 0.03)

    def calibrated(self, target: float = 0.01) -> tuple[np.ndarray, Reference]:
        """(centroid vector, reference) from 1,000 training and 500 held-out normals."""
        centroid = unit(self.normal(1000).mean(axis=0))
        holdout = self.normal(500)
        sims = holdout @ centroid
        threshold = threshold_at_fpr(sims, target)
        reference = Reference.from_calibration(threshold, len(sims), fpr(sims, threshold),
                                               similarity_profile(sims, holdout))
        return centroid, reference


def feed(monitor: DriftMonitor, rows: np.ndarray, centroid: np.ndarray, threshold: float, *,
         key: str | None = None, start: float = 0.0) -> list[dict[str, Any]]:
    events = []
    for i, (row, sim) in enumerate(zip(rows, rows @ centroid, strict=True)):
        alerted = bool(sim < threshold)
        events += monitor.observe(key, Observation(float(sim), alerted,
                                                   row if alerted else None,
                                                   {"offset": i}), start + i)
    return events


class TestStatistics:
    def test_beta_binomial_tail_matches_the_sum_of_its_probabilities(self) -> None:
        n, a, b = 30, 2.5, 40.0

        def pmf(x: int) -> float:
            return math.comb(n, x) * math.exp(
                math.lgamma(x + a) + math.lgamma(n - x + b) - math.lgamma(n + a + b)
                - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b))

        for k in (0, 1, 3, 10, 30, 31):
            assert beta_binomial_sf(k, n, a, b) == pytest.approx(
                sum(pmf(x) for x in range(k, n + 1)), rel=1e-9, abs=1e-15)

    def test_a_precise_calibration_tends_to_the_binomial_tail(self) -> None:
        n, p, k = 200, 0.01, 6
        binomial = sum(math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(k, n + 1))
        assert beta_binomial_sf(k, n, p * 1e7, (1 - p) * 1e7) == pytest.approx(binomial,
                                                                              rel=1e-3)
        assert beta_binomial_sf(k, n, 5 * p, 5 * (1 - p)) > 2 * binomial  # imprecise: wider

    def test_ks_below_sees_only_a_downward_shift(self) -> None:
        rng = np.random.default_rng(0)
        quantiles = np.quantile(rng.normal(size=5000), np.linspace(0, 1, 101))
        assert ks_below(rng.normal(size=2000), quantiles) < 0.04
        assert ks_below(rng.normal(size=2000) - 0.5, quantiles) > 0.15
        assert ks_below(rng.normal(size=2000) + 0.5, quantiles) < 0.04


class TestReference:
    def test_an_artifact_carries_what_drift_needs(self) -> None:
        world = World(0)
        result = calibrate(world.normal(700), world.normal(400), None, model="m",
                           dimension=DIM, bootstrap=10)
        body = result.artifact.to_json()
        reference = Reference.from_artifact(body)
        k = round(body["metrics"]["holdout_fpr"] * 400)
        assert reference.alert_prior == (k + 1, 400 - k)
        assert len(reference.quantiles) == PROFILE_LEVELS
        assert reference.quantiles[0] == pytest.approx(result.holdout_sims.min())
        assert 0 < reference.near_duplicate < 1

    def test_an_artifact_without_a_profile_is_refused(self) -> None:
        world = World(0)
        body = calibrate(world.normal(700), world.normal(400), None, model="m",
                         dimension=DIM, bootstrap=10).artifact.to_json()
        del body["metrics"]["similarity_profile"]
        with pytest.raises(ValueError, match="recalibrate"):
            Reference.from_artifact(body)


class TestMonitor:
    def test_a_stationary_stream_of_100000_records_raises_no_event(self) -> None:
        config = DriftConfig(window_records=1000, window_s=None)
        for seed in range(5):
            world = World(seed)
            centroid, reference = world.calibrated()
            monitor = DriftMonitor(reference, config, seed=seed)
            events = []
            for _ in range(10):
                events += feed(monitor, world.normal(10_000), centroid, reference.threshold)
            assert monitor.windows_closed == 100
            assert events == [], f"seed {seed}: {events[0]}"

    def test_each_test_rejects_a_stationary_window_at_most_at_its_alpha(self) -> None:
        """With a loose budget (alpha 0.05 per test), false rejections over 400 windows of
        40 calibrations: the alert-rate test near alpha (exact, it carries the threshold's
        uncertainty), the KS test below it (conservative), any event at most 2 alpha."""
        config = DriftConfig(window_records=500, window_s=None, false_alarm_budget=0.2,
                             budget_windows=2)
        assert config.alpha == pytest.approx(0.05)
        windows, moved = 0, []
        for seed in range(40):
            world = World(100 + seed)
            centroid, reference = world.calibrated()
            monitor = DriftMonitor(reference, config)
            events = feed(monitor, world.normal(5000), centroid, reference.threshold)
            windows += monitor.windows_closed
            moved += [name for e in events for name in e["moved"]]
        assert windows == 400
        assert 0.02 <= moved.count("alert_rate") / windows <= 0.1
        assert moved.count("similarity") / windows <= 0.05
        assert len(moved) / windows <= 2 * config.alpha

    def test_a_population_shift_raises_an_event_within_one_window(self) -> None:
        world = World(1)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=500, window_s=None))
        assert feed(monitor, world.normal(2000), centroid, reference.threshold) == []
        mixed = np.concatenate([world.normal(700), world.shifted(300)])
        mixed = mixed[world.rng.permutation(len(mixed))]
        events = feed(monitor, mixed, centroid, reference.threshold)
        assert events, "no drift event for a 30 % shift"
        event = events[0]
        assert event["schema"] == DRIFT_SCHEMA
        assert event["window"]["index"] == 4  # the first window of the shift
        assert set(event["moved"]) == {"alert_rate", "similarity"}
        assert event["alert_rate"]["observed"] > 5 * event["alert_rate"]["expected"]
        assert event["similarity"]["median"] < event["similarity"]["median_reference"]
        assert event["low_scoring"]["classification"] == "broad"

    def test_a_campaign_is_one_tight_cluster(self) -> None:
        world = World(2)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=500, window_s=None))
        spam = np.concatenate([world.normal(450), world.campaign(50)])
        spam = spam[world.rng.permutation(len(spam))]
        events = feed(monitor, spam, centroid, reference.threshold)
        assert len(events) == 1
        low = events[0]["low_scoring"]
        assert low["classification"] == "campaign"
        assert low["cluster_alerts"] >= 45
        assert low["cluster_cosine"] > reference.near_duplicate
        assert len(low["examples"]) == 3
        assert orjson.loads(orjson.dumps(events[0])) == events[0]  # JSON-ready as it is

    def test_a_shift_above_the_threshold_moves_only_the_similarity(self) -> None:
        world = World(9)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=1000, window_s=None))
        sims = np.maximum(world.normal(1000) @ centroid - 0.08, reference.threshold + 1e-6)
        events = []
        for i, sim in enumerate(sims):
            events += monitor.observe(None, Observation(float(sim), False), float(i))
        assert [e["moved"] for e in events] == [["similarity"]]
        low = events[0]["low_scoring"]
        assert (low["classification"], low["sample"]) == ("broad", 0)
        assert low["near_duplicate_cosine"] == reference.near_duplicate

    def test_a_campaign_during_a_shift_is_mixed(self) -> None:
        world = World(3)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=500, window_s=None))
        both = np.concatenate([world.normal(300), world.shifted(150), world.campaign(50)])
        events = feed(monitor, both[world.rng.permutation(500)], centroid, reference.threshold)
        assert [e["low_scoring"]["classification"] for e in events] == ["mixed"]

    def test_windows_close_by_time_on_observe_and_on_tick(self) -> None:
        world = World(4)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=None, window_s=60.0))
        rows = world.shifted(200)
        events = feed(monitor, rows[:100], centroid, reference.threshold, start=0.0)
        # one record a second: the record at t = 60 closes the first window
        assert [(e["window"]["start"], e["window"]["end"], e["window"]["records"])
                for e in events] == [(0.0, 60.0, 60)]
        assert monitor.tick(119.0) == []  # the second window is 59 s old
        events = monitor.tick(1000.0)
        assert monitor.windows_closed == 2
        assert [(e["window"]["start"], e["window"]["records"], e["window"]["closed_by"])
                for e in events] == [(60.0, 40, "time")]

    def test_keys_are_streams_of_their_own_and_bounded(self) -> None:
        world = World(5)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=300, window_s=None,
                                                      max_keys=2))
        feed(monitor, world.normal(100), centroid, reference.threshold, key="a")
        feed(monitor, world.normal(100), centroid, reference.threshold, key="b")
        events = feed(monitor, world.shifted(300), centroid, reference.threshold, key="c")
        assert monitor.keys_evicted == 1  # "a", least recently seen
        scopes = sorted((e["scope"], e["key"]) for e in events)
        assert scopes == [("global", None), ("key", "c")]

    def test_keys_stay_bounded_between_windows(self) -> None:
        world = World(8)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=10, window_s=None,
                                                      max_keys=2))
        for key in "abcde":  # each key closes a whole window and is never seen again
            feed(monitor, world.normal(10), centroid, reference.threshold, key=key)
        assert monitor.keys_evicted == 3
        assert monitor.windows_closed == 10  # 5 global and 5 per-key windows

    def test_a_new_calibration_drops_the_open_windows(self) -> None:
        world = World(6)
        centroid, reference = world.calibrated()
        monitor = DriftMonitor(reference, DriftConfig(window_records=300, window_s=None))
        feed(monitor, world.shifted(200), centroid, reference.threshold, key="a")
        _, fitted = World(7).calibrated()
        assert monitor.adopt(fitted) == 2  # the global window and key "a"'s
        assert monitor.reference is fitted
        assert feed(monitor, world.shifted(100), centroid, reference.threshold) == []
        assert monitor.windows_closed == 0  # the 100 records began a new window
