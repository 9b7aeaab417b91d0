"""The one retry policy for embedding calls: exponential backoff with full jitter, or the
server's `Retry-After`, within a deadline. Pure, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from detector.config import EmbeddingSettings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait before retry number `attempt`, and for how long to keep trying."""

    base_s: float = 0.5
    max_s: float = 30.0
    deadline_s: float = 120.0
    jitter: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    @classmethod
    def from_settings(cls, settings: EmbeddingSettings) -> RetryPolicy:
        return cls(settings.retry_base_s, settings.retry_max_s, settings.retry_deadline_s)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (1, 2, ...): the server's `Retry-After`
        when it sent one, else full jitter over ``min(max_s, base_s·2^attempt)``."""
        if retry_after is not None:
            return retry_after
        return self.jitter(0.0, min(self.max_s, self.base_s * 2**attempt))

    def within(self, started: float, now: float, delay: float) -> bool:
        """Whether a retry after `delay` still starts before the deadline of a call that
        began at `started` (same clock as `now`)."""
        return now + delay <= started + self.deadline_s
