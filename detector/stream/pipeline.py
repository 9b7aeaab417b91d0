"""Flow control: fetch → decode → batch → embed → score in order → deliver → commit.

One `Pipeline` drives one consumer; its collaborators do the rest: the `Scorer`
(scorer.py) judges embedded comments and encodes outputs, the `Outbox` (delivery.py)
publishes them, tracks done records and commits. The fetch loop decodes records and cuts
batches of at most `embedding.batch_size` (smaller once `linger_ms` has passed). Each
batch starts an embedding task at once, held in a FIFO, the reorder window, so the scorer
takes them in submission order whatever order the calls finish in. The window holds up
to `embedding.reorder_window` batches (default 16 × concurrency) while the `BatchEmbedder`
lets at most `concurrency` calls run, so one slow call at the head does not stop new
calls while finished batches wait behind it for their turn. When the window is full the
input partitions are paused (the consumer keeps polling, so it keeps its group
membership) instead of buffering without bound: memory and uncommitted records hold at
most ``reorder_window × batch_size`` texts plus one poll of records. The `BatchEmbedder`
(embedding.py) embeds a batch without losing a text: refused texts become dead letters,
retriable failures keep the batch under the `RetryPolicy` with the input paused behind it.

A record is *done* when it is scored (or dead-lettered) and every output it caused is
acknowledged by the broker; offsets are committed only over done prefixes, on a timer,
on partition revocation and at shutdown. With `bounds` the pipeline is a bounded replay
that stops by itself once every partition reached its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.embedders.base import Embedder
from detector.embedders.retry import RetryPolicy
from detector.errors import EmbeddingError, FatalEmbeddingError, TransactionFailedError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model import scorer as scoring
from detector.model.scorer import Scorer
from detector.stream.delivery import Outbox, Work
from detector.stream.embedding import BatchEmbedder, Outcome

log = structlog.get_logger("detector.stream.pipeline")
# Longest stretch of decoding between two returns to the event loop (one record can take
# longer; input.max_bytes and input.max_fields bound that).
INGEST_SLICE_S = 0.01

Item = tuple[rec.Comment, int]  # a comment and its offset-ledger generation


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
        embedder: Embedder,
        scorer: Scorer,
        outbox: Outbox,
        metrics: Metrics,
        retry: RetryPolicy | None = None,
        bounds: dict[TopicPartition, int] | None = None,
        start_offsets: dict[TopicPartition, int] | None = None,
        on_revoked: Callable[[], Awaitable[None]] | None = None,
        quiet_alerts: bool = False,
        on_scored: Callable[[list[scoring.Embedded], list[scoring.Verdict]], None] | None = None,
    ) -> None:
        """`bounds` (exclusive end offsets) turn the pipeline into a bounded replay that
        starts at `start_offsets` and stops by itself once every partition reached its
        bound. `retry` defaults to the policy of `settings.embedding`. `on_revoked` is
        awaited after revoked partitions were finished and committed (e.g. publish state).
        `quiet_alerts` logs each alert at debug instead of info (a dry-run replay prints
        only its summary). `on_scored` sees every scored batch (the scorer's input and its
        verdicts) before its outputs are handed to the outbox (the drift stage)."""
        self.settings = settings
        self._quiet_alerts = quiet_alerts
        self.consumer = consumer
        self.scorer = scorer
        self.outbox = outbox
        self.metrics = metrics
        self.embedding = BatchEmbedder(
            embedder, retry or RetryPolicy.from_settings(settings.embedding), metrics,
            stopping=lambda: self._stopping, concurrency=settings.embedding.concurrency,
            hedge_after_p99=settings.embedding.hedge_after_p99)
        self.bounds = bounds
        self.start_offsets = dict(start_offsets or {})
        self.on_revoked = on_revoked
        self.on_scored = on_scored
        self.finished: set[TopicPartition] = set()
        self._replayed = False  # a bounded replay reached every bound
        self._failure: TransactionFailedError | None = None
        self._fatal: FatalEmbeddingError | None = None
        # set by the first completed rebalance, even one that assigns nothing: a replica
        # beyond the partition count is a ready standby, not a pod that never gets ready
        self._joined = False
        # The partitions owned between the rebalance callbacks (the consumer's assignment
        # still lists revoked partitions until the next one is applied).
        self._owned: set[TopicPartition] = set()
        self._pending: list[Item] = []
        self._pending_since = 0.0
        # Batches being embedded or waiting to be scored, in submission order: the reorder
        # window, at most `embedding.window` of them (calls in flight: `concurrency`).
        self._inflight: deque[Batch] = deque()
        self._space = asyncio.Event()  # a batch left the FIFO
        self._submitted = asyncio.Event()  # a batch entered the FIFO
        self._seq = 0
        self._paused = False
        self._stopping = False
        self._last_offset: dict[tuple[str, int], int] = {}
        metrics.threshold.set(scorer.threshold)
        # Read at scrape time: merges from other replicas change the centroid too.
        metrics.centroid_weight.set_function(lambda: self.scorer.centroid.weight)
        metrics.centroid_version.set_function(lambda: self.scorer.centroid.version)
        metrics.assigned.set_function(lambda: len(self._owned))

    # ------------------------------------------------------------------ status
    @property
    def fatal(self) -> FatalEmbeddingError | None:
        """The error that stopped the input, when the embedder failed fatally."""
        return self._fatal

    @property
    def failure(self) -> TransactionFailedError | None:
        """The transaction that could not be committed (exactly_once), if any."""
        return self._failure

    @property
    def joined(self) -> bool:
        """Whether a rebalance completed (the consumer is a member of its group)."""
        return self._joined

    @property
    def owned(self) -> frozenset[TopicPartition]:
        """The partitions this pipeline owns now."""
        return frozenset(self._owned)

    def _done(self) -> bool:
        """A bounded replay finished, or a transaction failed: stop fetching."""
        return self._replayed or self._failure is not None

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
            await self._commit()

    async def _drain(self, scorer: asyncio.Task[None]) -> None:
        deadline = self.settings.shutdown_timeout_s
        try:
            async with asyncio.timeout(deadline):
                if self.fatal is None:
                    if self.bounds is None or self._replayed:
                        await self._submit_pending(force=True)
                    # An interrupted replay leaves its partial batch for --resume, so batches
                    # stay aligned with the range start and output stays byte-identical.
                    while self._inflight:
                        self._space.clear()
                        await self._space.wait()
                await self.outbox.drain()
        except TimeoutError:
            log.warning("shutdown deadline passed with work in flight",
                        in_flight=self.outbox.in_flight(), deadline_s=deadline)
        leftovers: list[asyncio.Task[Any]] = [scorer, *self.outbox.pending()]
        leftovers.extend(batch.task for batch in self._inflight)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def listener(self) -> ConsumerRebalanceListener:
        """A rebalance listener that finishes and commits revoked partitions' work."""
        return _Rebalance(self._revoked, self._assigned)

    # ------------------------------------------------------------------ fetch side
    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        linger = self.settings.embedding.linger_ms / 1000
        stop_wait = asyncio.ensure_future(stop.wait())
        fetch: asyncio.Future[dict[TopicPartition, list[rec.KafkaRecord]]] | None = None
        if self.bounds is not None:
            self._check_bounds({})
        try:
            while not stop.is_set() and not self._done():
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
                    await self._ingest(fetched)
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
            self._replayed = True
        return kept

    def _start_at(self, tp: TopicPartition) -> int:
        last = self._last_offset.get((tp.topic, tp.partition))
        return last + 1 if last is not None else self.start_offsets.get(tp, 0)

    async def _ingest(self, fetched: dict[TopicPartition, list[rec.KafkaRecord]]) -> None:
        """Decode a fetch. Decoding yields to the event loop every `INGEST_SLICE_S`, so a
        fetch of large or expensive records (up to fetch_max_bytes of them) does not stall
        the other partitions' scoring, commits and heartbeats; records of a partition
        revoked meanwhile are left to its next owner."""
        if self.bounds is not None:
            fetched = self._check_bounds(fetched)
        bad: list[Work] = []
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + INGEST_SLICE_S
        for tp, records in fetched.items():
            for record in records:
                if loop.time() > slice_end:
                    await asyncio.sleep(0)
                    slice_end = loop.time() + INGEST_SLICE_S
                    if tp not in self.consumer.assignment():
                        break
                self._last_offset[(tp.topic, tp.partition)] = record.offset
                self.metrics.consumed.inc()
                generation = self.outbox.track((tp.topic, tp.partition), record.offset)
                decoded = rec.decode(record, self.settings.input,
                                     self.settings.scoring.key_field)
                if isinstance(decoded, rec.DeadLetter):
                    verdict = self.scorer.refuse(decoded)
                    scoring.record(self.metrics, verdict, quiet=self._quiet_alerts)
                    bad.append((decoded.source, generation, verdict.messages))
                    continue
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append((decoded, generation))
        if bad:
            self.outbox.deliver(bad)

    def _backlogged(self) -> bool:
        return self._full() and len(self._pending) >= self.settings.embedding.batch_size

    def _full(self) -> bool:
        return len(self._inflight) >= self.settings.embedding.window

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
        """Cut full batches (and a lingered or forced partial one) while the window has room."""
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
            embedding = self.embedding.embed([c for c, _ in chunk])
            batch = Batch(self._seq, chunk, asyncio.create_task(embedding))
            self.metrics.queued.inc()
            self.metrics.batch_size.observe(len(chunk))
            self._inflight.append(batch)
            self._submitted.set()

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
            self.metrics.queued.dec()
            self._score(batch, outcomes)
            self._space.set()

    def _halt(self, exc: FatalEmbeddingError) -> None:
        self._fatal = exc
        self.metrics.ready.set(0)
        log.error("embedding failed fatally; input stopped and no offset past the failed "
                  "batch will be committed; fix the cause and restart",
                  error=str(exc), code=exc.code)
        for batch in self._inflight:  # this batch and later ones stay uncommitted
            batch.task.cancel()
        self.metrics.queued.dec(len(self._inflight))
        self._inflight.clear()
        self._space.set()

    def _score(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Score the batch in order, account for it, and hand its outputs to the outbox."""
        items = [(comment, outcome) for (comment, _), outcome
                 in zip(batch.items, outcomes, strict=True)]
        verdicts = self.scorer.score(items)
        if self.on_scored is not None:
            self.on_scored(items, verdicts)
        work: list[Work] = []
        for (comment, generation), verdict in zip(batch.items, verdicts, strict=True):
            scoring.record(self.metrics, verdict, quiet=self._quiet_alerts)
            work.append((comment.source, generation, verdict.messages))
        self.metrics.scored.inc(sum(v.similarity is not None for v in verdicts))
        log.debug("batch scored", seq=batch.seq, size=len(batch.items),
                  alerts=sum(v.alert for v in verdicts))
        self.outbox.deliver(work)

    # ------------------------------------------------------------------ commits
    async def _commit_loop(self) -> None:
        interval = self.settings.kafka.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit()
            await self._update_lag()

    async def _commit(self, only: Collection[TopicPartition] | None = None) -> None:
        """Commit through the outbox; a failed transaction stops the fetch loop, and a
        restart resumes from the last committed transaction."""
        try:
            await self.outbox.commit(only)
        except TransactionFailedError as exc:
            self._failure = exc

    async def _update_lag(self) -> None:
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

    # ------------------------------------------------------------------ rebalance
    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self._owned -= revoked
        for tp in revoked:  # another replica reports these now; a stale gauge would add up
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        if revoked:
            await self._finish_partitions(revoked, self.settings.shutdown_timeout_s)
            log.info("partitions revoked", partitions=sorted(f"{t.topic}-{t.partition}"
                                                             for t in revoked))

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(f"{t.topic}-{t.partition}"
                                                          for t in assigned))
        if not assigned:
            log.warning("no input partitions assigned: standing by (more replicas than "
                        "partitions)")
        self._joined = True
        self._owned = set(assigned)
        self.metrics.ready.set(1 if self._fatal is None else 0)

    async def _finish_partitions(self, revoked: set[TopicPartition], deadline_s: float
                                 ) -> None:
        """Score and publish everything fetched from `revoked`, then commit them."""
        keys = {(tp.topic, tp.partition) for tp in revoked}
        try:
            async with asyncio.timeout(deadline_s):
                if self._fatal is None:
                    await self._submit_pending(force=True)
                await self.outbox.settled(keys)
        except TimeoutError:
            log.warning("revoked partitions not finished in time; their tail will be redone",
                        in_flight=sum(self.outbox.in_flight(k) for k in keys))
        await self._commit(only=revoked)
        self.outbox.forget(list(keys))
        if self.on_revoked is not None:
            await self.on_revoked()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands the consumer's rebalance callbacks to the pipeline."""

    def __init__(self, revoked: Callable[[set[TopicPartition]], Awaitable[None]],
                 assigned: Callable[[set[TopicPartition]], None]) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned(set(assigned))
