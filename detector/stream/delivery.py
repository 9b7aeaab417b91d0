"""Delivery: publish outputs, know which records are done, commit their offsets.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from detector.errors import TransactionFailedError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.stream.offsets import OffsetTracker

log = structlog.get_logger("detector.stream.delivery")

Work = tuple[rec.Source, int, list[rec.Message]]  # a record, its generation, what it emits


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
        """Called with the outbox's `Gate` held exclusively: nothing is being sent."""
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        await self.producer.commit_transaction()
        await self.producer.begin_transaction()

    async def close(self) -> None:
        """Abort whatever the last interval left open (nothing is lost: not committed)."""
        with contextlib.suppress(Exception):
            await self.producer.abort_transaction()


class Outbox:
    """Publishes records' outputs, tracks which records are done, commits done prefixes."""

    def __init__(self, producer: Sink, committer: Committer, metrics: Metrics, *,
                 alerts_topic: str, assigned: Callable[[], Collection[TopicPartition]],
                 gate: Gate | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """`assigned` lists the partitions a commit covers by default (the consumer's
        assignment); `gate` is given in exactly-once mode: publishes share it, commits
        take it alone."""
        self.producer = producer
        self.committer = committer
        self.metrics = metrics
        self.alerts_topic = alerts_topic
        self.assigned = assigned
        self.gate = gate
        self.sleep = sleep
        self.tracker = OffsetTracker()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()

    # ------------------------------------------------------------------ tracking
    def track(self, tp: TopicPartition, offset: int) -> int:
        """Register a fetched record; returns the generation to hand back with its work."""
        return self.tracker.add(tp, offset)

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        return self.tracker.in_flight(tp)

    def forget(self, tps: list[TopicPartition]) -> None:
        self.tracker.forget(tps)

    async def settled(self, tps: Iterable[TopicPartition]) -> None:
        """Return once no record of `tps` is in flight."""
        keys = list(tps)
        while any(self.tracker.in_flight(k) for k in keys):
            self._progress.clear()
            await self._progress.wait()

    def _done(self, source: rec.Source, generation: int) -> None:
        self.tracker.done(TopicPartition(source.topic, source.partition), source.offset,
                          generation)

    # ------------------------------------------------------------------ publishing
    def deliver(self, work: list[Work]) -> None:
        """Mark output-free records done now; publish the rest in one background task."""
        with_output: list[Work] = []
        for source, generation, messages in work:
            if messages:
                with_output.append((source, generation, messages))
            else:
                self._done(source, generation)
        if with_output:
            task = asyncio.create_task(self._publish(with_output))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        self._progress.set()

    def emit(self, messages: list[rec.Message]) -> None:
        """Publish outputs tied to no input record (drift events): acknowledged and resent
        like alerts, inside the transaction in exactly-once mode, but holding back no
        offset. `drain` waits for them too."""
        if not messages:
            return
        task = asyncio.create_task(self._publish([], messages))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def pending(self) -> list[asyncio.Task[None]]:
        """Publishes still waiting for acknowledgements."""
        return list(self._deliveries)

    async def drain(self) -> None:
        """Wait until every publish started so far (and any started meanwhile) ended."""
        while self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def _publish(self, work: list[Work], loose: list[rec.Message] | None = None
                       ) -> None:
        """Send every message (of `work`, and the `loose` ones tied to no record), wait for
        the broker's acks, then mark the records done.

        A send that fails after the producer's own retries is sent again (at-least-once)
        until it is acknowledged or the outbox's task is cancelled at shutdown.
        """
        if self.gate is None:
            await self._publish_now(work, loose or [])
            return
        async with self.gate.shared():
            await self._publish_now(work, loose or [])

    async def _publish_now(self, work: list[Work], loose: list[rec.Message]) -> None:
        sends: list[tuple[rec.Source | None, rec.Message]] = [
            (source, msg) for source, _, messages in work for msg in messages]
        sends += [(None, msg) for msg in loose]
        attempt = 0
        while sends:
            futures = []
            for _, (topic, key, value) in sends:  # appended in order, acknowledged together
                try:
                    futures.append(await self.producer.send(topic, value=value, key=key))
                except KafkaError as exc:  # refused before batching, e.g. too large
                    refused: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                    refused.set_exception(exc)
                    futures.append(refused)
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [s for s, r in zip(sends, results, strict=True) if isinstance(r, Exception)]
            now = time.time()
            for (source, (topic, _, _)), result in zip(sends, results, strict=True):
                if source is not None and not isinstance(result, Exception) \
                        and topic == self.alerts_topic:
                    self.metrics.alerts.inc()
                    self.metrics.end_to_end.observe(max(0.0, now - source.timestamp / 1000))
            if failed:
                attempt += 1
                self.metrics.publish_retries.inc(len(failed))
                delay = min(10.0, 0.2 * 2**attempt)
                log.warning("publish failed, resending", failed=len(failed), retry_in_s=delay,
                            error=str(next(r for r in results if isinstance(r, Exception))))
                await self.sleep(delay)
            sends = failed
        for source, generation, _ in work:
            self._done(source, generation)
        self._progress.set()

    # ------------------------------------------------------------------ commits
    async def commit(self, only: Collection[TopicPartition] | None = None) -> None:
        """Commit the done prefix of every assigned partition (or of `only`).

        In exactly-once mode the offsets are read while the gate is held exclusively, so
        the transaction closes over exactly the outputs of the records it commits; a
        transaction that fails raises `TransactionFailedError` (it cannot be retried).
        A failed group commit is only logged: the next commit covers its offsets.
        """
        if self.gate is None:
            await self._commit_done(only)
            return
        async with self.gate.exclusive():
            await self._commit_done(only, always=True)

    async def _commit_done(self, only: Collection[TopicPartition] | None, *,
                           always: bool = False) -> None:
        assigned = self.assigned() if only is None else only
        offsets = {tp: offset for tp, offset in self.tracker.to_commit().items()
                   if tp in assigned}
        if not offsets and not always:
            return
        try:
            await self.committer.commit(offsets)
        except KafkaError as exc:
            if self.gate is None:
                log.warning("commit failed; will retry on the next interval", error=repr(exc))
                return
            log.error("transaction commit failed; stopping", error=repr(exc))
            msg = f"transaction commit failed: {exc!r}"
            raise TransactionFailedError(msg) from exc
        self.tracker.mark_committed(offsets)
        if offsets:
            log.debug("committed", offsets={f"{tp.topic}-{tp.partition}": o
                                            for tp, o in offsets.items()})
