"""Waiting for a topic that the daemon reads but does not need to start: the feedback
topic (operator labels) and the state topic (other replicas' records).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.errors import KafkaError

from detector.config import KafkaSettings
from detector.io.kafka import topic_partitions
from detector.metrics import Metrics

log = structlog.get_logger("detector.io.optional")

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


async def wait_for_topic(settings: KafkaSettings, topic: str, *, reader: str,
                         metrics: Metrics | None) -> tuple[list[int], bool]:
    """The partitions of `topic` once it exists, and whether it was missing at first."""
    delay = FIRST_RETRY_S
    missing = False
    while True:
        try:
            partitions = await topic_partitions(settings, topic)
            error = None
        except (KafkaError, OSError) as exc:
            partitions, error = [], repr(exc)
        if partitions:
            if missing:
                log.info("topic exists now; reading it", reader=reader, topic=topic)
            if metrics is not None:
                metrics.set_topic_missing(reader, topic, missing=False)
            return partitions, missing
        if not missing:
            log.warning("topic does not exist (yet); looking again with back-off",
                        reader=reader, topic=topic, error=error, max_retry_s=MAX_RETRY_S)
            missing = True
            if metrics is not None:
                metrics.set_topic_missing(reader, topic, missing=True)
        await asyncio.sleep(delay)
        delay = min(MAX_RETRY_S, delay * 2)
