"""The streaming pipeline: fetch → decode → batch → embed → score in order → deliver → commit.

One `Pipeline` drives one consumer. The fetch loop decodes records and cuts batches of
at most `embedding.batch_size` (smaller once `linger_ms` has passed). Each batch starts
an embedding task at once; up to `concurrency` batches are in flight, held in a FIFO so
the scorer takes them in submission order whatever order the calls finish in. When the
FIFO is full the input partitions are paused (the consumer keeps polling, so it keeps
its group membership) instead of buffering without bound: memory holds at most
``concurrency × batch_size`` texts in flight plus one poll of records.

A record is *done* when it is scored (or dead-lettered) and every output it caused is
acknowledged by the broker; offsets are committed only over done prefixes
(`OffsetTracker`), on a timer, on partition revocation and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from detector import records as rec
from detector.centroid import Centroid
from detector.config import Settings
from detector.delivery import Committer, Gate, GroupCommitter, Sink
from detector.embedders.base import Embedder, Matrix
from detector.errors import BatchRejectedError, EmbeddingError, FatalEmbeddingError
from detector.metrics import Metrics
from detector.offsets import OffsetTracker

log = structlog.get_logger("detector.pipeline")

Item = tuple[rec.Comment, int]  # a comment and its offset-ledger generation
Outcome = Matrix | rec.DeadLetter  # a unit vector, or why the text was refused
Message = tuple[str, bytes | None, bytes]  # topic, key, value
Work = tuple[rec.Source, int, list[Message]]  # a record, its generation, what it emits


@dataclass(slots=True)
class Batch:
    """Comments submitted together, and the task embedding them."""

    seq: int
    items: list[Item]
    task: asyncio.Task[list[Outcome]]


class Pipeline:
    """Consumes, scores and publishes until `stop` is set or the embedder fails fatally."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: AIOKafkaConsumer,
        producer: Sink,
        embedder: Embedder,
        centroid: Centroid,
        threshold: float,
        metrics: Metrics,
        context: rec.Context,
        committer: Committer | None = None,
        gate: Gate | None = None,
        bounds: dict[TopicPartition, int] | None = None,
        quiet_alerts: bool = False,
    ) -> None:
        """`bounds` (exclusive end offsets) turn the pipeline into a bounded replay that
        stops by itself once every partition reached its bound. `quiet_alerts` logs each
        alert at debug instead of info (a dry-run replay prints only its summary)."""
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.committer = committer or GroupCommitter(consumer)
        self.gate = gate  # set in exactly-once mode: publishes share it, commits take it
        self.failure: Exception | None = None  # a transaction could not be committed
        self.bounds = bounds
        self._log_alert = log.debug if quiet_alerts else log.info
        self.finished: set[TopicPartition] = set()
        self.start_offsets: dict[TopicPartition, int] = {}  # where a bounded replay starts
        self._exhausted = asyncio.Event()
        self.embedder = embedder
        self.centroid = centroid
        self.threshold = threshold
        self.metrics = metrics
        self.context = context
        self.tracker = OffsetTracker()
        self.fatal: FatalEmbeddingError | None = None
        # set by the first completed rebalance, even one that assigns nothing: a replica
        # beyond the partition count is a ready standby, not a pod that never gets ready
        self.joined = False
        # The partitions owned between the rebalance callbacks (the consumer's assignment
        # still lists revoked partitions until the next one is applied).
        self.owned: set[TopicPartition] = set()
        self.on_revoked: Callable[[], Awaitable[None]] | None = None  # e.g. publish state
        # Told of local centroid updates: (S before, w before, number of updates).
        self.on_update: Callable[[npt.NDArray[np.float64], float, int], None] | None = None
        self._pending: list[Item] = []
        self._pending_since = 0.0
        # Batches being embedded or waiting to be scored, in submission order; at most
        # `concurrency` of them, so at most concurrency x batch_size texts are in flight.
        self._inflight: deque[Batch] = deque()
        self._space = asyncio.Event()  # a batch left the FIFO
        self._submitted = asyncio.Event()  # a batch entered the FIFO
        self._deliveries: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()
        self._seq = 0
        self._paused = False
        self._stopping = False
        self._last_offset: dict[tuple[str, int], int] = {}
        metrics.threshold.set(threshold)
        # Read at scrape time: merges from other replicas change the centroid too.
        metrics.centroid_weight.set_function(lambda: self.centroid.weight)
        metrics.centroid_version.set_function(lambda: self.centroid.version)
        metrics.assigned.set_function(lambda: len(self.owned))

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then drain within `shutdown_timeout_s` and commit."""
        scorer = asyncio.create_task(self._score_loop(), name="scorer")
        committer = asyncio.create_task(self._commit_loop(), name="committer")
        try:
            await self._fetch_loop(stop)
        finally:
            self._stopping = True
            await self._drain(scorer)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self.commit()

    async def _drain(self, scorer: asyncio.Task[None]) -> None:
        deadline = self.settings.shutdown_timeout_s
        try:
            async with asyncio.timeout(deadline):
                if self.fatal is None:
                    if self.bounds is None or self._exhausted.is_set():
                        await self._submit_pending(force=True)
                    # An interrupted replay leaves its partial batch for --resume, so batches
                    # stay aligned with the range start and output stays byte-identical.
                    while self._inflight:
                        self._space.clear()
                        await self._space.wait()
                while self._deliveries:
                    await asyncio.gather(*self._deliveries, return_exceptions=True)
        except TimeoutError:
            log.warning("shutdown deadline passed with work in flight",
                        in_flight=self.tracker.in_flight(), deadline_s=deadline)
        leftovers: list[asyncio.Task[Any]] = [scorer, *self._deliveries]
        leftovers.extend(batch.task for batch in self._inflight)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def listener(self) -> ConsumerRebalanceListener:
        """A rebalance listener that finishes and commits revoked partitions' work."""
        return _Rebalance(self)

    # ------------------------------------------------------------------ fetch side
    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        linger = self.settings.embedding.linger_ms / 1000
        stop_wait = asyncio.ensure_future(stop.wait())
        fetch: asyncio.Future[dict[TopicPartition, list[rec.KafkaRecord]]] | None = None
        if self.bounds is not None:
            self._check_bounds({})
        try:
            while not stop.is_set() and not self._exhausted.is_set():
                await self._submit_pending(force=False)
                self._set_paused(self.fatal is not None or self._backlogged())
                if fetch is None:
                    fetch = asyncio.ensure_future(self.consumer.getmany(
                        timeout_ms=500, max_records=self.settings.kafka.max_poll_records))
                extra: list[asyncio.Future[object]] = []
                timeout = None
                if self._paused:
                    self._space.clear()
                    extra.append(asyncio.ensure_future(self._space.wait()))
                elif self._pending:
                    timeout = max(0.0, self._pending_since + linger - time.monotonic())
                await asyncio.wait(
                    [fetch, stop_wait, *extra], timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in extra:
                    waiter.cancel()
                if fetch.done():
                    done, fetch = fetch, None
                    try:
                        fetched = done.result()
                    except KafkaError as exc:  # the broker restarts, a leader moves ...
                        log.warning("fetch failed; retrying", error=repr(exc))
                        await asyncio.sleep(1.0)
                        continue
                    self._ingest(fetched)
        finally:
            stop_wait.cancel()
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await fetch

    def _check_bounds(self, fetched: dict[TopicPartition, list[rec.KafkaRecord]]
                      ) -> dict[TopicPartition, list[rec.KafkaRecord]]:
        """Drop records at or past each partition's bound; note partitions that are done."""
        assert self.bounds is not None
        kept: dict[TopicPartition, list[rec.KafkaRecord]] = {}
        for tp, end in self.bounds.items():
            records = [r for r in fetched.get(tp, []) if r.offset < end]
            if records:
                kept[tp] = records
            last = (records[-1].offset + 1) if records else None
            if tp not in self.finished and (
                    (last is not None and last >= end) or self._start_at(tp) >= end):
                self.finished.add(tp)
                self.consumer.pause(tp)
        if len(self.finished) == len(self.bounds):
            self._exhausted.set()
        return kept

    def _start_at(self, tp: TopicPartition) -> int:
        last = self._last_offset.get((tp.topic, tp.partition))
        return last + 1 if last is not None else self.start_offsets.get(tp, 0)

    def _ingest(self, fetched: dict[TopicPartition, list[rec.KafkaRecord]]) -> None:
        if self.bounds is not None:
            fetched = self._check_bounds(fetched)
        bad: list[Work] = []
        for tp, records in fetched.items():
            if records:
                self._last_offset[(tp.topic, tp.partition)] = records[-1].offset
            for record in records:
                self.metrics.consumed.inc()
                generation = self.tracker.add((tp.topic, tp.partition), record.offset)
                decoded = rec.decode(record, self.settings.input)
                if isinstance(decoded, rec.DeadLetter):
                    bad.append((decoded.source, generation, [self._dead_letter(decoded)]))
                    continue
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append((decoded, generation))
        if bad:
            self._deliver(bad)

    def _backlogged(self) -> bool:
        return self._full() and len(self._pending) >= self.settings.embedding.batch_size

    def _full(self) -> bool:
        return len(self._inflight) >= self.settings.embedding.concurrency

    def _set_paused(self, paused: bool) -> None:
        assigned = self.consumer.assignment()
        if paused:
            self.consumer.pause(*assigned)  # also pauses partitions assigned since
        if paused == self._paused:
            return
        if not paused:
            self.consumer.resume(*(tp for tp in assigned if tp not in self.finished))
        self._paused = paused
        self.metrics.paused.set(len(assigned) if paused else 0)
        log.debug("input paused" if paused else "input resumed", partitions=len(assigned))

    async def _submit_pending(self, *, force: bool) -> None:
        """Cut full batches (and a lingered or forced partial one) while the FIFO has room."""
        size = self.settings.embedding.batch_size
        linger = self.settings.embedding.linger_ms / 1000
        while self._pending:
            lingered = time.monotonic() - self._pending_since >= linger
            if not (len(self._pending) >= size or force or lingered):
                return
            if self._full():
                if not force:
                    return
                while self._full():  # shutdown or revocation: wait for room, stay bounded
                    self._space.clear()
                    await self._space.wait()
            chunk, self._pending = self._pending[:size], self._pending[size:]
            self._pending_since = time.monotonic()
            self._seq += 1
            batch = Batch(self._seq, chunk, asyncio.create_task(self._embed([c for c, _ in chunk])))
            self.metrics.inflight.inc()
            self.metrics.batch_size.observe(len(chunk))
            self._inflight.append(batch)
            self._submitted.set()

    # ------------------------------------------------------------------ embedding
    async def _embed(self, comments: Sequence[rec.Comment]) -> list[Outcome]:
        """Vectors for the comments, in order; a text the API refuses becomes a dead letter.

        A refused batch is split in halves until the offending text is alone, so only
        that one is dead-lettered.
        """
        try:
            return list(await self._embed_until_done([c.text for c in comments]))
        except BatchRejectedError as exc:
            if len(comments) == 1:
                reason = f"rejected:{exc.code}" if exc.code else "rejected"
                return [rec.DeadLetter(comments[0].source, reason, str(exc), None)]
            half = len(comments) // 2
            return [*await self._embed(comments[:half]), *await self._embed(comments[half:])]

    async def _embed_until_done(self, texts: list[str]) -> Matrix:
        """Retry retriable failures until they succeed (input stays paused behind us)."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                matrix = await self.embedder.embed(texts)
            except EmbeddingError as exc:
                if not exc.retriable or self._stopping:
                    raise
                attempt += 1
                delay = random.uniform(0, min(30.0, 0.5 * 2**attempt))
                log.warning("embedding failed, retrying", error=str(exc), code=exc.code,
                            attempt=attempt, retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            self.metrics.embed_seconds.observe(time.monotonic() - started)
            return matrix

    # ------------------------------------------------------------------ scoring
    async def _score_loop(self) -> None:
        while True:
            while not self._inflight:
                self._submitted.clear()
                await self._submitted.wait()
            batch = self._inflight[0]
            try:
                outcomes = await batch.task
            except FatalEmbeddingError as exc:
                self._halt(exc)
                return
            except EmbeddingError as exc:  # retriable, raised only while stopping
                log.warning("batch left unscored at shutdown", error=str(exc))
                return
            self._inflight.popleft()
            self.metrics.inflight.dec()
            self._score(batch, outcomes)
            self._space.set()

    def _halt(self, exc: FatalEmbeddingError) -> None:
        self.fatal = exc
        self.metrics.ready.set(0)
        log.error("embedding failed fatally; input stopped and no offset past the failed "
                  "batch will be committed; fix the cause and restart",
                  error=str(exc), code=exc.code)
        for batch in self._inflight:  # this batch and later ones stay uncommitted
            batch.task.cancel()
        self.metrics.inflight.dec(len(self._inflight))
        self._inflight.clear()
        self._space.set()

    def _score(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Score vectors in order, decide, and hand every record's outputs to delivery."""
        rows = [i for i, o in enumerate(outcomes) if not isinstance(o, rec.DeadLetter)]
        sims: list[float] = []
        updated: list[bool] = []
        if rows:
            before = (self.centroid.sum.copy(), self.centroid.weight)
            scored = self.centroid.score(
                np.stack([cast(Matrix, outcomes[i]) for i in rows]), self.threshold,
                self.settings.scoring.margin, update=self.settings.scoring.update,
            )
            sims, updated = scored.similarities.tolist(), scored.updated.tolist()
            accepted = int(scored.updated.sum())
            if accepted and self.on_update is not None:
                self.on_update(before[0], before[1], accepted)
        by_row = dict(zip(rows, zip(sims, updated, strict=True), strict=True))
        work: list[Work] = []
        alerts = 0
        for i, (comment, generation) in enumerate(batch.items):
            outcome = outcomes[i]
            if isinstance(outcome, rec.DeadLetter):
                work.append((comment.source, generation, [self._dead_letter(outcome)]))
                continue
            similarity, was_update = by_row[i]
            self.metrics.similarity.observe(similarity)
            messages = self._outputs(comment, similarity, was_update)
            alerts += similarity < self.threshold
            work.append((comment.source, generation, messages))
        self.metrics.scored.inc(len(rows))
        log.debug("batch scored", seq=batch.seq, size=len(batch.items), alerts=alerts)
        self._deliver(work)

    def _outputs(self, comment: rec.Comment, similarity: float, updated: bool) -> list[Message]:
        anomaly = similarity < self.threshold
        messages: list[Message] = []
        key = comment.source.key
        if anomaly:
            self._log_alert("alert", id=comment.id, similarity=round(similarity, 4),
                            threshold=self.threshold, partition=comment.source.partition,
                            offset=comment.source.offset)
            messages.append((self.settings.alerts.topic, key, rec.encode_alert(
                comment, similarity=similarity, threshold=self.threshold,
                centroid_version=self.centroid.version, centroid_count=self.centroid.weight,
                ctx=self.context)))
        if self.settings.alerts.scores_topic:
            messages.append((self.settings.alerts.scores_topic, key, rec.encode_score(
                comment, similarity=similarity, threshold=self.threshold, anomaly=anomaly,
                updated=updated, centroid_version=self.centroid.version)))
        return messages

    def _dead_letter(self, letter: rec.DeadLetter) -> Message:
        self.metrics.dead_letters.labels(reason=letter.reason.split(":")[0]).inc()
        log.warning("dead letter", reason=letter.reason, error=letter.error,
                    topic=letter.source.topic, partition=letter.source.partition,
                    offset=letter.source.offset)
        return (self.settings.alerts.dead_letter_topic, letter.source.key,
                rec.encode_dead_letter(letter, self.context))

    # ------------------------------------------------------------------ delivery
    def _deliver(self, work: list[Work]) -> None:
        """Mark output-free records done now; publish the rest in one background task."""
        with_output: list[Work] = []
        for source, generation, messages in work:
            if messages:
                with_output.append((source, generation, messages))
            else:
                self.tracker.done((source.topic, source.partition), source.offset, generation)
        if with_output:
            task = asyncio.create_task(self._publish(with_output))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        self._progress.set()

    async def _publish(self, work: list[Work]) -> None:
        """Send every message, wait for the broker's acks, then mark the records done.

        A send that fails after the producer's own retries is sent again (at-least-once)
        until it is acknowledged or the pipeline is cancelled at shutdown.
        """
        if self.gate is None:
            await self._publish_now(work)
            return
        async with self.gate.shared():
            await self._publish_now(work)

    async def _publish_now(self, work: list[Work]) -> None:
        sends = [(source, msg) for source, _, messages in work for msg in messages]
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
                if not isinstance(result, Exception) and topic == self.settings.alerts.topic:
                    self.metrics.alerts.inc()
                    self.metrics.end_to_end.observe(max(0.0, now - source.timestamp / 1000))
            if failed:
                attempt += 1
                self.metrics.publish_retries.inc(len(failed))
                delay = min(10.0, 0.2 * 2**attempt)
                log.warning("publish failed, resending", failed=len(failed), retry_in_s=delay,
                            error=str(next(r for r in results if isinstance(r, Exception))))
                await asyncio.sleep(delay)
            sends = failed
        for source, generation, _ in work:
            self.tracker.done((source.topic, source.partition), source.offset, generation)
        self._progress.set()

    # ------------------------------------------------------------------ commits
    async def _commit_loop(self) -> None:
        interval = self.settings.kafka.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.commit()
            await self._update_lag()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the done prefix of every assigned partition (or of `only`).

        In exactly-once mode the offsets are read while the gate is held exclusively, so
        the transaction closes over exactly the outputs of the records it commits.
        """
        if self.gate is None:
            await self._commit_done(only)
            return
        async with self.gate.exclusive():
            await self._commit_done(only, always=True)

    async def _commit_done(self, only: set[TopicPartition] | None, *, always: bool = False
                           ) -> None:
        assigned = self.consumer.assignment() if only is None else only
        offsets = {
            TopicPartition(*tp): offset
            for tp, offset in self.tracker.to_commit().items()
            if TopicPartition(*tp) in assigned
        }
        if not offsets and not always:
            return
        try:
            await self.committer.commit(offsets)
        except KafkaError as exc:
            if self.gate is None:
                log.warning("commit failed; will retry on the next interval", error=repr(exc))
                return
            # A transaction that cannot commit cannot be retried: stop, and let a restart
            # resume from the last committed transaction.
            log.error("transaction commit failed; stopping", error=repr(exc))
            self.failure = exc
            self._exhausted.set()
            return
        self.tracker.mark_committed({(tp.topic, tp.partition): o for tp, o in offsets.items()})
        if offsets:
            log.debug("committed", offsets={f"{tp.topic}-{tp.partition}": o
                                            for tp, o in offsets.items()})

    async def _update_lag(self) -> None:
        """Lag = the partition's high watermark minus the position of the next record the
        consumer hands to the pipeline (transaction markers and compacted gaps included);
        known once a fetch of the partition has returned."""
        for tp in list(self.owned):
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:  # valid once a fetch returned; the timeout guards a reset in progress
                position = await asyncio.wait_for(self.consumer.position(tp), 1.0)
            except (IllegalStateError, TimeoutError):  # revoked or reset meanwhile
                continue
            if tp in self.owned:  # not revoked during the await
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    async def finish_partitions(self, revoked: set[TopicPartition], deadline_s: float) -> None:
        """Score and publish everything fetched from `revoked`, then commit them."""
        keys = {(tp.topic, tp.partition) for tp in revoked}
        try:
            async with asyncio.timeout(deadline_s):
                if self.fatal is None:
                    await self._submit_pending(force=True)
                while any(self.tracker.in_flight(k) for k in keys):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            log.warning("revoked partitions not finished in time; their tail will be redone",
                        in_flight=sum(self.tracker.in_flight(k) for k in keys))
        await self.commit(only=revoked)
        self.tracker.forget(list(keys))
        if self.on_revoked is not None:
            await self.on_revoked()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.pipeline.owned -= set(revoked)
        for tp in revoked:  # another replica reports these now; a stale gauge would add up
            with contextlib.suppress(KeyError):
                self.pipeline.metrics.lag.remove(tp.topic, str(tp.partition))
        if revoked:
            timeout = self.pipeline.settings.shutdown_timeout_s
            await self.pipeline.finish_partitions(set(revoked), timeout)
            log.info("partitions revoked", partitions=sorted(f"{t.topic}-{t.partition}"
                                                             for t in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(f"{t.topic}-{t.partition}"
                                                          for t in assigned))
        if not assigned:
            log.warning("no input partitions assigned: standing by (more replicas than "
                        "partitions)")
        self.pipeline.joined = True
        self.pipeline.owned = set(assigned)
        self.pipeline.metrics.ready.set(1 if self.pipeline.fatal is None else 0)
