"""The one embedding retry policy: backoff, Retry-After and the deadline."""

from __future__ import annotations

from detector.config import EmbeddingSettings
from detector.embedders.retry import RetryPolicy


def widest(low: float, high: float) -> float:
    """A jitter that always takes the cap, so the backoff bound is visible."""
    return high


class TestRetryPolicy:
    def test_backoff_doubles_from_the_base_up_to_the_cap(self) -> None:
        """Without Retry-After the delay bound is base·2^attempt, capped at max_s."""
        policy = RetryPolicy(base_s=0.5, max_s=3.0, deadline_s=60, jitter=widest)
        assert [policy.delay(n) for n in range(1, 5)] == [1.0, 2.0, 3.0, 3.0]

    def test_full_jitter_draws_between_zero_and_the_bound(self) -> None:
        """The default jitter stays within [0, bound]."""
        policy = RetryPolicy(base_s=0.5, max_s=30.0, deadline_s=60)
        assert all(0.0 <= policy.delay(3) <= 4.0 for _ in range(200))

    def test_the_servers_retry_after_wins(self) -> None:
        """A Retry-After from the server is the delay, whatever the attempt."""
        policy = RetryPolicy(base_s=0.5, max_s=1.0, deadline_s=60, jitter=widest)
        assert policy.delay(1, retry_after=7.5) == 7.5

    def test_a_retry_is_within_the_deadline_only_if_it_starts_before_it(self) -> None:
        """within is true while now + delay does not pass started + deadline_s."""
        policy = RetryPolicy(deadline_s=10)
        assert policy.within(100.0, 105.0, 5.0)
        assert not policy.within(100.0, 105.0, 5.5)

    def test_the_policy_reads_the_embedding_settings(self) -> None:
        """from_settings takes retry_base_s, retry_max_s and retry_deadline_s."""
        settings = EmbeddingSettings(retry_base_s=0.25, retry_max_s=4.0, retry_deadline_s=9.0)
        policy = RetryPolicy.from_settings(settings)
        assert (policy.base_s, policy.max_s, policy.deadline_s) == (0.25, 4.0, 9.0)
