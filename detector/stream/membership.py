"""Group membership: the partitions a consumer owns between rebalances, and their lag.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from detector.metrics import Metrics

log = structlog.get_logger("detector.stream.pipeline")


class Membership(ConsumerRebalanceListener):  # type: ignore[misc]
    """The partitions owned now, kept by the consumer's rebalance callbacks."""

    def __init__(self, consumer: AIOKafkaConsumer, metrics: Metrics, *,
                 finish: Callable[[set[TopicPartition]], Awaitable[None]],
                 healthy: Callable[[], bool]) -> None:
        """`finish` is awaited with the partitions revoked; `healthy` says whether the
        pipeline can score (it is ready once assigned partitions, or none, if so)."""
        self.consumer = consumer
        self.metrics = metrics
        self.finish = finish
        self.healthy = healthy
        self.joined = False
        self._owned: set[TopicPartition] = set()
        metrics.assigned.set_function(lambda: len(self._owned))

    @property
    def owned(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        revoked = set(revoked)
        self._owned -= revoked
        for tp in revoked:  # another replica reports these now; a stale gauge would add up
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        if revoked:
            await self.finish(revoked)
            log.info("partitions revoked", partitions=sorted(f"{t.topic}-{t.partition}"
                                                             for t in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(f"{t.topic}-{t.partition}"
                                                          for t in assigned))
        if not assigned:
            log.warning("no input partitions assigned: standing by (more replicas than "
                        "partitions)")
        self.joined = True
        self._owned = set(assigned)
        self.metrics.ready.set(1 if self.healthy() else 0)

    async def update_lag(self) -> None:
        """Lag = the partition's high watermark minus the position of the next record the
        consumer hands to the pipeline (transaction markers and compacted gaps included);
        known once a fetch of the partition has returned."""
        for tp in list(self._owned):
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:  # valid once a fetch returned; the timeout guards a reset in progress
                position = await asyncio.wait_for(self.consumer.position(tp), 1.0)
            except (IllegalStateError, TimeoutError):  # revoked or reset meanwhile
                continue
            if tp in self._owned:  # not revoked during the await
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
