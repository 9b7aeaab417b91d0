"""The intake: which fetched records the pipeline takes, and when the input is paused.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import structlog
from aiokafka import AIOKafkaConsumer

from detector.metrics import Metrics
from detector.stream.bounds import Bounds, Fetched

log = structlog.get_logger("detector.stream.pipeline")


class Intake:
    """Pauses and resumes the consumer's partitions; clips fetches at replay bounds."""

    def __init__(self, consumer: AIOKafkaConsumer, metrics: Metrics,
                 bounds: Bounds | None) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.bounds = bounds
        self.paused = False

    def set_paused(self, paused: bool) -> None:
        """Pause the input (also partitions assigned since the last pause) or resume it."""
        assigned = self.consumer.assignment()
        if paused:
            self.consumer.pause(*assigned)  # also pauses partitions assigned since
        if paused == self.paused:
            return
        if not paused:
            self.consumer.resume(*(assigned if self.bounds is None
                                   else self.bounds.unfinished(assigned)))
        self.paused = paused
        self.metrics.paused.set(len(assigned) if paused else 0)
        log.debug("input paused" if paused else "input resumed", partitions=len(assigned))

    def clip(self, fetched: Fetched) -> Fetched:
        """The records to take: all of them when live; before the bounds in a replay, where
        partitions that reached their bound are paused for good."""
        if self.bounds is None:
            return fetched
        kept, reached = self.bounds.clip(fetched)
        if reached:
            self.consumer.pause(*reached)
        return kept
