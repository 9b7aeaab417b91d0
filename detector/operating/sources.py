"""Reading back a labelled record of the input topic, so a label's text is checked
against what this detector consumed (detector.operating.labels): the committed position
of a partition (the detector's consumer group, as its pipeline's consumer sees it) and
the record at one offset (a reader with no group, started on first use)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.io.kafka import reader_consumer
from detector.io.records import KafkaRecord, Position

Committed = Callable[[TopicPartition], Awaitable[int | None]]


class SourceRecords(Protocol):
    """What the feedback stage asks of the input topic."""

    async def committed(self, tp: TopicPartition) -> int | None: ...

    async def fetch(self, position: Position) -> KafkaRecord | None: ...


class InputRecords:
    """The input topic's committed positions and records, read on demand."""

    def __init__(self, settings: Settings, committed: Committed,
                 timeout_s: float = 10.0) -> None:
        self.settings = settings
        self._committed = committed
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed position of `tp` (None: nothing committed yet)."""
        return await self._committed(tp)

    async def fetch(self, position: Position) -> KafkaRecord | None:
        """The record at `position`; None when it is gone (retention, compaction) or was
        never written."""
        if self._consumer is None:
            consumer = reader_consumer(self.settings.kafka)
            await consumer.start()
            self._consumer = consumer
        consumer = self._consumer
        tp = TopicPartition(position.topic, position.partition)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not first <= position.offset < end:
            return None
        consumer.seek(tp, position.offset)
        async with asyncio.timeout(self.timeout_s):
            while True:
                fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                for record in fetched.get(tp, []):
                    # a compacted or aborted offset is skipped: the next one comes back
                    return record if record.offset == position.offset else None

    async def aclose(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(Exception):
                await consumer.stop()
