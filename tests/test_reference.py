"""Reference normals: the order-statistic rank, its false-positive interval, the derived
threshold and gate, leave-one-out scores and the compact row encoding."""

from __future__ import annotations

import numpy as np
import pytest

from detector.model import reference as ref


class TestRank:
    def test_confidence_one_half_is_the_point_estimate(self) -> None:
        assert ref.rank(300, 0.01, 0.5) == 3
        assert ref.rank(1000, 0.01, 0.5) == 10

    def test_higher_confidence_picks_a_lower_rank(self) -> None:
        assert ref.rank(2000, 0.01, 0.9) is not None
        assert ref.rank(2000, 0.01, 0.9) < ref.rank(2000, 0.01, 0.5)  # type: ignore[operator]

    def test_too_few_normals_have_no_rank(self) -> None:
        assert ref.rank(100, 0.01, 0.9) is None
        assert ref.rank(0, 0.01, 0.5) is None

    @pytest.mark.parametrize(("n", "confidence"), [(850, 0.9), (2000, 0.9), (400, 0.8)])
    def test_the_rank_keeps_its_promise_on_simulated_normals(self, n: int,
                                                             confidence: float) -> None:
        # The FPR of the k-th smallest of n uniforms is that uniform itself.
        k = ref.rank(n, 0.01, confidence)
        assert k is not None
        draws = np.sort(np.random.default_rng(1).random((4000, n)), axis=1)[:, k - 1]
        exceed = float(np.mean(draws > 0.01))
        assert exceed <= 1 - confidence + 0.02
        # and it is the largest such rank: one higher breaks the promise
        higher = np.sort(np.random.default_rng(2).random((4000, n)), axis=1)[:, k]
        assert float(np.mean(higher > 0.01)) > 1 - confidence - 0.02


class TestInterval:
    def test_the_interval_covers_the_simulated_fpr(self) -> None:
        n, k = 850, 5
        low, high = ref.fpr_interval(n, k, level=0.9)
        draws = np.sort(np.random.default_rng(3).random((4000, n)), axis=1)[:, k - 1]
        inside = float(np.mean((draws >= low) & (draws <= high)))
        assert 0.87 <= inside <= 0.93
        assert low < k / (n + 1) < high


class TestDerive:
    def test_threshold_is_the_ranked_score_and_gate_the_quantile(self) -> None:
        scores = np.linspace(0.0, 1.0, 1001)
        derived = ref.derive(scores, 0.01, 0.5, admit_quantile=0.05)
        assert derived is not None
        assert derived.rank == 10
        assert derived.threshold == pytest.approx(scores[9])
        assert derived.gate == pytest.approx(0.05)
        assert derived.reference == 1001

    def test_gate_is_never_below_the_threshold(self) -> None:
        derived = ref.derive(np.linspace(0, 1, 1001), 0.05, 0.5, admit_quantile=0.0)
        assert derived is not None
        assert derived.gate == derived.threshold

    def test_too_small_a_reference_derives_nothing(self) -> None:
        assert ref.derive(np.linspace(0, 1, 50), 0.01, 0.9, admit_quantile=0.05) is None

    def test_support_needs_half_the_target_expected(self) -> None:
        assert ref.supports(850, 0.01, 0.9)
        assert not ref.supports(300, 0.01, 0.9)

    def test_support_is_monotonic_in_the_number_of_normals(self) -> None:
        """The rank steps, so 'expected FPR at least half the target' alone flips between
        true and false as n grows; support holds from one count on, for good."""
        flags = [ref.supports(n, 0.01, 0.9) for n in range(1, 2001)]
        first = flags.index(True)
        assert all(flags[first:])
        k = ref.rank(first + 1, 0.01, 0.9)
        assert k is not None
        assert k / (first + 2) >= 0.005


class TestLeaveOneOut:
    def test_each_row_is_scored_against_the_others(self) -> None:
        rows = np.random.default_rng(4).normal(size=(20, 8))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        got = ref.leave_one_out(rows, rows.sum(axis=0))
        for i in (0, 7, 19):
            rest = np.delete(rows, i, axis=0).sum(axis=0)
            assert got[i] == pytest.approx(rows[i] @ rest / np.linalg.norm(rest))


class TestRows:
    def test_rows_round_trip_at_float16_precision(self) -> None:
        rows = np.random.default_rng(5).normal(size=(30, 64)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        back = ref.decode_rows(ref.encode_rows(rows), 64)
        assert back.shape == (30, 64)
        assert np.max(np.abs(back - rows)) < 2e-3
        assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)

    def test_a_wrong_dimension_is_refused(self) -> None:
        with pytest.raises(ValueError, match="dimension"):
            ref.decode_rows(ref.encode_rows(np.ones((3, 5))), 4)
