"""Flow control: fetch → decode → batch → embed → score in order → deliver → commit.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.errors import EmbeddingError, FatalEmbeddingError, TransactionFailedError
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model import scorer as scoring
from detector.model.scorer import Scorer
from detector.stream.batcher import Batcher
from detector.stream.bounds import Bounds, Fetched
from detector.stream.delivery import Outbox, Work
from detector.stream.embedding import BatchEmbedder, VectorOrRefusal
from detector.stream.intake import Intake
from detector.stream.membership import Membership
from detector.stream.reorder import Batch, ReorderWindow

log = structlog.get_logger("detector.stream.pipeline")
# Longest stretch of decoding between two returns to the event loop (one record can take
# longer; input.max_bytes and input.max_fields bound that).
INGEST_SLICE_S = 0.01


class Pipeline:
    """Consumes, scores and publishes until `stop` is set or the embedder fails fatally."""

    def __init__(self, settings: Settings, *, consumer: AIOKafkaConsumer,
                 embedding: BatchEmbedder, scorer: Scorer, outbox: Outbox, metrics: Metrics,
                 bounds: Bounds | None = None,
                 on_revoked: Callable[[], Awaitable[None]] | None = None,
                 quiet_alerts: bool = False,
                 on_scored: Callable[[list[scoring.Embedded], list[scoring.Verdict]], None]
                 | None = None) -> None:
        """`bounds` turn the pipeline into a bounded replay that stops by itself once every
        partition reached its bound (None: live). `on_revoked` is awaited after revoked
        partitions were finished and committed (e.g. publish state). `quiet_alerts` logs
        each alert at debug instead of info (a dry-run replay prints only its summary).
        `on_scored` sees every scored batch (the scorer's input and its verdicts) before
        its outputs are handed to the outbox (the drift stage)."""
        self.settings = settings
        self._quiet_alerts = quiet_alerts
        self.consumer = consumer
        self.embedding = embedding
        self.scorer = scorer
        self.outbox = outbox
        self.metrics = metrics
        self.bounds = bounds
        self.on_revoked = on_revoked
        self.on_scored = on_scored
        self._failure: TransactionFailedError | None = None
        self._fatal: FatalEmbeddingError | None = None
        self.membership = Membership(consumer, metrics, finish=self._finish_partitions,
                                     healthy=lambda: self._fatal is None)
        # at most `embedding.window` batches embedding or waiting (calls: `concurrency`)
        self.window = ReorderWindow(settings.embedding.window, metrics)
        self.batcher = Batcher(self.window, embedding,
                               batch_size=settings.embedding.batch_size,
                               linger_s=settings.embedding.linger_ms / 1000)
        self.intake = Intake(consumer, metrics, bounds)
        # Read at scrape time: merges from other replicas change the centroid too, and the
        # threshold follows the centroid (detector.model.reference).
        metrics.threshold.set_function(lambda: self.scorer.threshold)
        metrics.watch_baselines(scorer.baselines)
        metrics.centroid_weight.set_function(lambda: self.scorer.centroid.weight)
        metrics.centroid_version.set_function(lambda: self.scorer.centroid.version)

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
        return self.membership.joined

    @property
    def owned(self) -> frozenset[TopicPartition]:
        """The partitions this pipeline owns now."""
        return self.membership.owned

    def _done(self) -> bool:
        """A bounded replay finished, or a transaction failed: stop fetching."""
        return (self.bounds is not None and self.bounds.reached) or self._failure is not None

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (or a bounded replay read its range); then drain and
        commit. A shutdown drains within `shutdown_timeout_s`; a replay that reached its
        end finishes its work however long it takes, unless `stop` starts that budget."""
        scorer = asyncio.create_task(self._score_loop(), name="scorer")
        committer = asyncio.create_task(self._commit_loop(), name="committer")
        ended = False
        try:
            await self._fetch_loop(stop)
            ended = self._done() and self._failure is None and not stop.is_set()
        finally:
            await self._drain(scorer, stop, ended=ended)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._commit()

    async def _drain(self, scorer: asyncio.Task[None], stop: asyncio.Event, *, ended: bool
                     ) -> None:
        """Finish the work in flight within `shutdown_timeout_s`; a replay that `ended`
        (read its whole range) finishes it however long it takes, until `stop` is set."""
        deadline = self.settings.shutdown_timeout_s
        watch: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(None if ended else deadline) as budget:
                if ended:  # not a shutdown: no deadline, retriable failures retried
                    watch.append(asyncio.create_task(self._shut_down_on(stop, budget)))
                else:
                    self.embedding.stop_retrying()
                if self.fatal is None:
                    if self.bounds is None or self.bounds.reached:
                        await self.batcher.submit(force=True)
                    # An interrupted replay leaves its partial batch for --resume, so batches
                    # stay aligned with the range start and output stays byte-identical.
                    await self.window.empty()
                await self.outbox.drain()
        except TimeoutError:
            log.warning("shutdown deadline passed with work in flight",
                        in_flight=self.outbox.in_flight(), deadline_s=deadline)
        leftovers: list[asyncio.Task[Any]] = [scorer, *self.outbox.pending(),
                                              *self.window.tasks(), *watch]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def _shut_down_on(self, stop: asyncio.Event, budget: asyncio.Timeout) -> None:
        """Once `stop` is set, shut down: stop retrying, give the drain its deadline."""
        await stop.wait()
        self.embedding.stop_retrying()
        budget.reschedule(asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s)

    def listener(self) -> ConsumerRebalanceListener:
        """A rebalance listener that finishes and commits revoked partitions' work."""
        return self.membership

    # ------------------------------------------------------------------ fetch side
    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stop.wait())
        fetch: asyncio.Future[Fetched] | None = None
        self.intake.clip({})
        try:
            while not stop.is_set() and not self._done():
                await self.batcher.submit(force=False)
                self.intake.set_paused(self.fatal is not None or self.batcher.backlogged())
                if fetch is None:
                    fetch = asyncio.ensure_future(self.consumer.getmany(
                        timeout_ms=500, max_records=self.settings.kafka.max_poll_records))
                extra: list[asyncio.Future[object]] = []
                timeout = None
                if self.intake.paused:
                    extra.append(asyncio.ensure_future(self.window.departure()))
                else:  # None when nothing is pending
                    timeout = self.batcher.linger_left()
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

    async def _ingest(self, fetched: Fetched) -> None:
        """Decode a fetch. Decoding yields to the event loop every `INGEST_SLICE_S`, so a
        fetch of large or expensive records (up to fetch_max_bytes of them) does not stall
        the other partitions' scoring, commits and heartbeats; records of a partition
        revoked meanwhile are left to its next owner."""
        bad: list[Work] = []
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + INGEST_SLICE_S
        for tp, records in self.intake.clip(fetched).items():
            for record in records:
                if loop.time() > slice_end:
                    await asyncio.sleep(0)
                    slice_end = loop.time() + INGEST_SLICE_S
                    if tp not in self.consumer.assignment():
                        break
                self.metrics.consumed.inc()
                generation = self.outbox.track(tp, record.offset)
                decoded = rec.decode(record, self.settings.input,
                                     self.settings.scoring.key_field)
                if isinstance(decoded, rec.DeadLetter):
                    verdict = self.scorer.refuse(decoded)
                    scoring.record(self.metrics, verdict, quiet=self._quiet_alerts)
                    bad.append((decoded.source, generation, verdict.messages))
                    continue
                self.batcher.add((decoded, generation))
        if bad:
            self.outbox.deliver(bad)

    # ------------------------------------------------------------------ scoring
    async def _score_loop(self) -> None:
        while True:
            batch = await self.window.head()
            try:
                embedded = await batch.task
            except FatalEmbeddingError as exc:
                self._halt(exc)
                return
            except EmbeddingError as exc:  # retriable, raised only while stopping
                log.warning("batch left unscored at shutdown", error=str(exc))
                return
            self.window.pop()
            self._score(batch, embedded)

    def _halt(self, exc: FatalEmbeddingError) -> None:
        self._fatal = exc
        self.metrics.ready.set(0)
        log.error("embedding failed fatally; input stopped and no offset past the failed "
                  "batch will be committed; fix the cause and restart",
                  error=str(exc), code=exc.code)
        self.window.clear()  # this batch and later ones stay uncommitted

    def _score(self, batch: Batch, embedded: list[VectorOrRefusal]) -> None:
        """Score the batch in order, account for it, and hand its outputs to the outbox."""
        items = [(comment, vector) for (comment, _), vector
                 in zip(batch.items, embedded, strict=True)]
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
            await self.membership.update_lag()

    async def _commit(self, only: Collection[TopicPartition] | None = None) -> None:
        """Commit through the outbox; a failed transaction stops the fetch loop, and a
        restart resumes from the last committed transaction."""
        try:
            await self.outbox.commit(only)
        except TransactionFailedError as exc:
            self._failure = exc

    # ------------------------------------------------------------------ rebalance
    async def _finish_partitions(self, revoked: set[TopicPartition]) -> None:
        """Score and publish everything fetched from `revoked` (within
        `shutdown_timeout_s`), then commit them."""
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                if self._fatal is None:
                    await self.batcher.submit(force=True)
                await self.outbox.settled(revoked)
        except TimeoutError:
            log.warning("revoked partitions not finished in time; their tail will be redone",
                        in_flight=sum(self.outbox.in_flight(tp) for tp in revoked))
        await self._commit(only=revoked)
        self.outbox.forget(list(revoked))
        if self.on_revoked is not None:
            await self.on_revoked()

