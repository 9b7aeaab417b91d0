"""How outputs are published and progress recorded: the delivery modes.

* at_least_once (default): outputs are produced idempotently with acks=all, and the
  consumer group's offsets are committed once every record below them is done. A crash
  between publishing and committing re-publishes at most one commit interval of outputs
  (the duplicate window).
* exactly_once: one Kafka transaction per commit interval holds the alerts, dead
  letters, scores *and* the consumed offsets (`send_offsets_to_transaction`), so a
  `read_committed` reader sees each output exactly once. The pipeline holds the `Gate`
  exclusively while it reads the done offsets and closes the transaction, so no publish
  is in flight then and the transaction holds exactly the outputs of what it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition


class Sink(Protocol):
    """Where outputs go: an `AIOKafkaProducer`, or a file writer for replays."""

    async def send(self, topic: str, value: bytes, key: bytes | None = None
                   ) -> asyncio.Future[Any]: ...


class Committer(Protocol):
    """Records progress: consumer-group commits, a transaction, or a replay file."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class Gate:
    """Many publishers share it; a transaction commit takes it alone."""

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            await self._changed.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()


class GroupCommitter:
    """at_least_once: commits to the consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.consumer.commit(offsets)


class TransactionCommitter:
    """exactly_once: closes the open transaction with the offsets inside it.

    The producer must be transactional and a transaction open before the first send
    (`begin`). Any error here is fatal for the process: the transaction is aborted and
    the detector exits so that a restart resumes from the last committed transaction.
    """

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self.producer = producer
        self.group_id = group_id

    async def begin(self) -> None:
        await self.producer.begin_transaction()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Called with the pipeline's `Gate` held exclusively: nothing is being sent."""
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        await self.producer.commit_transaction()
        await self.producer.begin_transaction()

    async def close(self) -> None:
        """Abort whatever the last interval left open (nothing is lost: not committed)."""
        with contextlib.suppress(Exception):
            await self.producer.abort_transaction()
