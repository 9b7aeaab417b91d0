"""The fake API's latency shapes and per-second quota (pure logic; the HTTP side is in
tests/test_remote_http.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from devtools.fakeapi import Latency, Quota


def test_fixed_lognormal_and_straggler_latencies() -> None:
    rng = random.Random(1)
    assert Latency(0.1).draw(rng) == 0.1
    lognormal = Latency(0.1, sigma=0.5)
    draws = np.array([lognormal.draw(rng) for _ in range(20_000)])
    assert np.median(draws) == pytest.approx(0.1, rel=0.03)
    assert np.mean(draws) == pytest.approx(lognormal.mean_s(), rel=0.03)
    assert np.std(np.log(draws)) == pytest.approx(0.5, rel=0.03)
    stragglers = Latency(0.1, straggler_fraction=0.02, straggler_s=2.0)
    draws = np.array([stragglers.draw(rng) for _ in range(20_000)])
    assert np.mean(draws == 2.0) == pytest.approx(0.02, abs=0.004)
    assert stragglers.mean_s() == pytest.approx(0.98 * 0.1 + 0.02 * 2.0)


def test_quota_meters_each_second_on_its_own() -> None:
    quota = Quota(requests_per_s=2, tokens_per_s=100)
    assert quota.admit(10, 5.0) is None
    assert quota.admit(10, 5.5) is None
    assert quota.admit(10, 5.75) == pytest.approx(0.25)  # third request this second
    assert quota.admit(95, 6.0) is None  # a new second
    assert quota.admit(10, 6.1) == pytest.approx(0.9)  # tokens: 95 + 10 > 100
    assert quota.admit(200, 7.0) is None  # alone in its second, a big request passes
    assert Quota().admit(10**6, 0.0) is None
