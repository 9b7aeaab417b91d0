"""The centroid maths: mean, decay, merging, serialisation (gated updates:
tests/test_baselines.py)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detector.model.centroid import Centroid


def unit(*values: float) -> npt.NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


class TestCentroid:
    def test_seeded_centroid_is_the_normalised_mean(self) -> None:
        """from_vectors gives the direction of the mean of the unit rows and weight n."""
        c = Centroid.from_vectors([[1, 0, 0], [0, 1, 0]])
        assert c.weight == 2.0
        np.testing.assert_allclose(c.vector, unit(1, 1, 0))

    def test_similarity_is_cosine_to_the_centroid(self) -> None:
        """similarity of unit rows equals their cosine to the centroid direction."""
        c = Centroid.from_vectors([[1, 0, 0]])
        np.testing.assert_allclose(c.similarity(np.array([unit(1, 1, 0), unit(0, 0, 1)])),
                                   np.array([2**-0.5, 0.0]))

    def test_decay_forgets_old_samples(self) -> None:
        """with decay < 1 the centroid follows recent samples."""
        c = Centroid.from_vectors([[1, 0]], decay=0.5)
        for _ in range(10):
            c.add([0.0, 1.0])
        assert c.vector[1] > 0.99
        assert c.weight == pytest.approx(2.0, abs=0.01)  # geometric series limit 1/(1-0.5)

    def test_merge_adds_increments(self) -> None:
        """merging another replica's increment equals having seen its samples."""
        a = Centroid.from_vectors([[1, 0, 0]])
        a.merge([0.0, 2.0, 0.0], 2.0)
        b = Centroid.from_vectors([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
        np.testing.assert_allclose(a.vector, b.vector)
        assert a.weight == b.weight

    def test_round_trip_is_exact(self) -> None:
        """to_dict/from_dict preserve every bit of the state."""
        rng = np.random.default_rng(1)
        c = Centroid.from_vectors(rng.normal(size=(5, 16)), decay=0.99)
        c.add(np.ones(16) / 4)
        d = Centroid.from_dict(c.to_dict())
        np.testing.assert_array_equal(c.sum, d.sum)
        assert (c.weight, c.version, c.decay) == (d.weight, d.version, d.decay)

    def test_empty_centroid_scores_zero(self) -> None:
        """an empty centroid has no direction; every similarity is 0."""
        assert Centroid.empty(3).similarity([[1, 0, 0]]).tolist() == [0.0]

    @pytest.mark.parametrize("decay", [0.0, 1.5])
    def test_invalid_decay_is_refused(self, decay: float) -> None:
        """decay must be in (0, 1]."""
        with pytest.raises(ValueError, match="decay"):
            Centroid.empty(3, decay)
