"""Operator labels in the daemon: every replica reads `feedback.topic` and applies the
labels that are its own (detector.model.labels holds the pure rules).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from detector.config import Settings
from detector.embedders.base import Embedder
from detector.io import records as rec
from detector.io.kafka import reader_consumer, topic_partitions
from detector.io.optional import wait_for_topic
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.labels import (
    AlertCache,
    CachedAlert,
    Label,
    LabelBook,
    parse_label,
    text_hash,
)
from detector.model.reservoir import Ref
from detector.model.scorer import Embedded, Verdict
from detector.operating.sources import InputRecords, SourceRecords
from detector.state.label_records import SharedLabels
from detector.state.store import SharedCentroid

log = structlog.get_logger("detector.operating.labels")

Emit = Callable[[list[rec.Message]], None]
Vector = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True, slots=True)
class _Read:
    """A feedback record as read: where it sits, its key and value."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A text label whose offset this detector has not consumed yet."""

    label: Label
    target: rec.Position
    read: _Read
    deadline: float


class FeedbackStage:
    """Caches alert embeddings, reads labels, applies this replica's ones."""

    def __init__(self, settings: Settings, baselines: Baselines, metrics: Metrics, *,
                 embedder: Embedder, emit: Emit, context: rec.Context,
                 owned: Callable[[], frozenset[TopicPartition]] = frozenset,
                 shared: SharedCentroid | None = None,
                 labels: SharedLabels | None = None,
                 sources: SourceRecords | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`owned` names the input partitions this replica owns now (the pipeline's);
        `labels` is the label memory with its sharing (default: the baselines' memory,
        not shared); `sources` reads back labelled input records (default: none can be
        checked, so uncached text labels are refused ``source_unavailable``)."""
        feedback = settings.feedback
        self.settings = settings
        self.baselines = baselines
        self.metrics = metrics
        self.embedder = embedder
        self.emit = emit
        self.context = context
        self.shared = shared
        self.cache = AlertCache(feedback.alert_cache_size)
        self.book = LabelBook(feedback.weight, feedback.max_labels,
                              undo_capacity=feedback.alert_cache_size)
        self.owned = owned
        self.input_partitions = 1
        # next offset per feedback partition; the shared record's dict when sharing
        self.positions: dict[int, int] = shared.feedback if shared is not None else {}
        # key-baseline teachings that an anomaly label can undo: comment -> (key, increment)
        self._key_taught: OrderedDict[tuple[object, ...], tuple[str, np.ndarray[
            Any, np.dtype[np.float64]]]] = OrderedDict()
        if labels is None and baselines.memory is not None:
            labels = SharedLabels(baselines.memory, baselines.replica, embedder.name)
        self.labels = labels
        self.sources = sources
        self.clock = clock
        self._waiting: OrderedDict[tuple[int, int], _Waiting] = OrderedDict()
        book = self.book
        metrics.feedback_true.set_function(lambda: book.precision.true_alerts)
        metrics.feedback_false.set_function(lambda: book.precision.false_alerts)

    # ------------------------------------------------------------------ alerts
    def observe(self, items: Sequence[Embedded], verdicts: Sequence[Verdict]) -> None:
        """Remember the embedding of every alert of a scored batch."""
        for (comment, embedded), verdict in zip(items, verdicts, strict=True):
            if not verdict.alert or isinstance(embedded, rec.DeadLetter):
                continue
            assert verdict.similarity is not None
            self.cache.remember(CachedAlert(
                comment.source.position, comment.id,
                embedded, verdict.similarity, comment.key, text_hash(comment.text)))

    # ------------------------------------------------------------------ labels
    async def run(self) -> None:
        """Read the feedback topic from the stored positions until cancelled."""
        topic = self.settings.feedback.topic
        self.input_partitions = max(1, len(await topic_partitions(
            self.settings.kafka, self.settings.input.topic)))
        # a topic created later (Strimzi, an operator) is waited for, then read from its
        # beginning: every label in it came after this replica started
        partitions, appeared = await wait_for_topic(self.settings.kafka, topic,
                                                    reader="feedback", metrics=self.metrics)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer = reader_consumer(self.settings.kafka)
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            start = {tp.partition: self.positions.get(tp.partition, 0 if appeared else ends[tp])
                     for tp in tps}
            for tp in tps:
                consumer.seek(tp, start[tp.partition])
            log.info("reading operator labels", topic=topic, positions=start)
            while True:
                try:
                    fetched = await consumer.getmany(timeout_ms=1000)
                except KafkaError as exc:
                    log.warning("feedback fetch failed; retrying", error=repr(exc))
                    await asyncio.sleep(1.0)
                    continue
                for records in fetched.values():
                    for record in records:
                        await self.handle(record.partition, record.offset, record.timestamp,
                                          record.key, record.value)
                await self.recheck()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if isinstance(self.sources, InputRecords):
                await self.sources.aclose()

    async def handle(self, partition: int, offset: int, timestamp: int, key: bytes | None,
                     value: bytes | None) -> str:
        """Apply one label record if it is this replica's; returns what happened (the
        outcome; the metric and the debug log also say why, see `_handle`)."""
        read = _Read(partition, offset, timestamp, key, value)
        outcome, reason = await self._handle(read)
        self.positions[partition] = offset + 1
        if outcome != "waiting":  # counted once it is decided (`recheck`)
            self._count(read, outcome, reason)
        return outcome

    def _count(self, read: _Read, outcome: str, reason: str) -> None:
        self.metrics.feedback_labels.labels(outcome=outcome, reason=reason).inc()
        if outcome in ("skipped", "unresolved"):
            log.debug("label not applied", outcome=outcome, reason=reason,
                      partition=read.partition, offset=read.offset)

    async def _handle(self, read: _Read) -> tuple[str, str]:
        """(outcome, reason). Applied labels (taught, untaught, excluded, unchanged, and
        unresolved from the book) give how the comment was found: ``cached`` or ``text``;
        refused ones their dead-letter reason; the others:

        * skipped ``unknown_id``: no source, and the id is not in this replica's cache
          (another replica's alert, or one nobody caches: no replica can tell which);
        * skipped ``other_topic``: the source is not on the input topic;
        * skipped ``unknown_partition``: the input topic has no such partition;
        * skipped ``other_replica``: another replica owns the source partition;
        * unresolved ``not_cached``: this replica owns the source partition, the alert is
          no longer cached and the label has no text to embed;
        * revoked ``source``: a revoke of an uncached comment, by the partition's owner;
        * waiting: a text label of an offset not consumed yet (`recheck` decides it).
        """
        parsed = parse_label(read.value)
        if not isinstance(parsed, Label):
            if self._owns(self.settings.input.topic, read.partition % self.input_partitions):
                self._dead_letter(read, parsed.reason, parsed.error)
            return "refused", parsed.reason
        alert = self.cache.find(parsed)
        if alert is not None:
            if parsed.text is not None and not alert.matches(parsed.text):
                return self._refuse(read, "text_mismatch", "the label's text is not the "
                                    "text of the alerted comment")
            return self._apply(parsed, alert, None), "cached"
        target = parsed.source
        if target is None:
            return "skipped", "unknown_id"
        if target.topic != self.settings.input.topic:
            return "skipped", "other_topic"
        if target.partition >= self.input_partitions:
            return "skipped", "unknown_partition"
        if not self._owns(target.topic, target.partition):
            return "skipped", "other_replica"
        if parsed.label == "revoke":
            return self._apply(parsed, None, None), "source"
        if parsed.text is None:
            if parsed.label == "normal":  # the book counts it (`Precision.unresolved`), or
                # says unchanged when the comment's latest label is normal already
                return self.book.apply(parsed, self.baselines.global_.centroid), "not_cached"
            return "unresolved", "not_cached"
        if not await self._consumed(target):
            return self._wait(_Waiting(parsed, target, read,
                                       self.clock() + self.settings.feedback.pending_s))
        return await self._checked(parsed, target, read)

    # ------------------------------------------------------------------ validation
    async def _consumed(self, target: rec.Position) -> bool:
        """Whether the group committed past `target` (this detector scored it)."""
        if self.sources is None:
            return True  # nothing to ask: `_checked` refuses it (source_unavailable)
        try:
            position = await self.sources.committed(TopicPartition(target.topic,
                                                                   target.partition))
        except (KafkaError, TimeoutError) as exc:
            log.warning("committed position unknown; the label waits", error=repr(exc))
            return False
        return position is not None and target.offset < position

    def _wait(self, waiting: _Waiting) -> tuple[str, str]:
        """Hold a label until its offset is consumed; the oldest is refused when full."""
        while self._waiting and len(self._waiting) >= self.settings.feedback.max_pending:
            _, oldest = self._waiting.popitem(last=False)
            self._count(oldest.read, *self._refuse(
                oldest.read, "not_consumed", "too many labels wait for their offsets"))
        if self.settings.feedback.max_pending == 0:
            return self._refuse(waiting.read, "not_consumed",
                                f"offset {waiting.target.offset} not consumed yet")
        self._waiting[(waiting.read.partition, waiting.read.offset)] = waiting
        return "waiting", "not_consumed"

    async def recheck(self) -> None:
        """Decide the waiting labels whose offsets were consumed, or whose time is up."""
        now = self.clock()
        for item, waiting in list(self._waiting.items()):
            target = waiting.target
            if not self._owns(target.topic, target.partition):
                outcome: tuple[str, str] = ("skipped", "other_replica")
            elif await self._consumed(target):
                outcome = await self._checked(waiting.label, target, waiting.read)
            elif now >= waiting.deadline:
                outcome = self._refuse(waiting.read, "not_consumed", f"offset "
                                       f"{target.offset} was not consumed within "
                                       f"{self.settings.feedback.pending_s}s")
            else:
                continue
            del self._waiting[item]
            self._count(waiting.read, *outcome)

    async def _checked(self, label: Label, target: rec.Position, read: _Read
                       ) -> tuple[str, str]:
        """Apply a text label once the consumed record at `target` has the same text."""
        found = None
        if self.sources is not None:
            try:
                found = await self.sources.fetch(target)
            except (KafkaError, TimeoutError) as exc:
                log.warning("labelled record could not be read", error=repr(exc))
        comment = None if found is None else rec.decode(found, self.settings.input)
        if not isinstance(comment, rec.Comment):
            return self._refuse(read, "source_unavailable", f"no comment at "
                                f"{target.topic}/{target.partition}/{target.offset}")
        assert label.text is not None
        if comment.text != label.text:
            return self._refuse(read, "text_mismatch", "the label's text is not the text "
                                "of the record at its source")
        embedding = np.asarray((await self.embedder.embed([label.text]))[0],
                               dtype=np.float64)
        return self._apply(label, None, embedding), "text"

    def _refuse(self, read: _Read, reason: str, error: str) -> tuple[str, str]:
        self._dead_letter(read, reason, error)
        return "refused", reason

    def _dead_letter(self, read: _Read, reason: str, error: str) -> None:
        source = rec.Source(self.settings.feedback.topic, read.partition, read.offset,
                            read.timestamp, read.key)
        letter = rec.DeadLetter(source, reason, error, read.value)
        self.metrics.dead_letters.labels(reason=reason).inc()
        self.emit([(self.settings.alerts.dead_letter_topic, read.key,
                    rec.encode_dead_letter(letter, self.context))])
        log.warning("label refused", reason=reason, error=error, partition=read.partition,
                    offset=read.offset)

    # ------------------------------------------------------------------ applying
    def _apply(self, label: Label, alert: CachedAlert | None, embedding: Vector | None) -> str:
        glob = self.baselines.global_
        centroid = glob.centroid
        before = (centroid.sum.copy(), centroid.weight)
        outcome = self.book.apply(label, centroid, alert=alert, embedding=embedding)
        if outcome in ("taught", "untaught") or (
                outcome == "revoked" and centroid.weight != before[1]):
            glob.count_own(before[0], before[1])
        self._remember(label, alert, embedding, outcome)
        if outcome == "taught":
            vector = np.asarray(alert.embedding if alert is not None else embedding,
                                dtype=np.float64)
            source = alert.source if alert is not None else label.source
            assert source is not None
            glob.reservoir.offer(vector / np.linalg.norm(vector),
                                 Ref(source.topic, source.partition, source.offset,
                                     alert.id if alert is not None else label.id),
                                 origin=self.baselines.replica)
        self._teach_key(label, alert, outcome)
        log.info("label applied", label=label.label, outcome=outcome,
                 source=None if label.source is None else list(label.source.astuple()), id=label.id,
                 labeller=label.labeller)
        return outcome

    def _remember(self, label: Label, alert: CachedAlert | None, embedding: Vector | None,
                  outcome: str) -> None:
        """Keep the label in the memory that judges near duplicates (or forget it)."""
        source = alert.source if alert is not None else label.source
        if self.labels is None or source is None or outcome == "unresolved":
            return
        source = source.position
        if label.label == "revoke":
            self.labels.forget(source)
            return
        vector = alert.embedding if alert is not None else embedding
        if vector is None or (outcome == "unchanged" and source in self.labels.memory):
            return
        self.labels.remember(source, label.label, vector, label.labeller)

    def _teach_key(self, label: Label, alert: CachedAlert | None, outcome: str) -> None:
        """Apply a (un)teaching to the alert's key baseline too, when it is held."""
        comment = ("source", *alert.source.astuple()) if alert is not None else None
        if comment is None:
            return
        if outcome in ("untaught", "revoked"):
            taught = self._key_taught.pop(comment, None)
            if taught is not None and taught[0] in self.baselines.keys:
                self._merge(taught[0], -taught[1], -self.book.weight)
            return
        if outcome != "taught" or alert is None or alert.key is None \
                or alert.key not in self.baselines.keys:
            return
        vector = np.asarray(alert.embedding, dtype=np.float64)
        increment = self.book.weight * vector / np.linalg.norm(vector)
        self._merge(alert.key, increment, self.book.weight)
        self.baselines.keys[alert.key].reservoir.offer(
            vector / np.linalg.norm(vector),
            Ref(alert.source.topic, alert.source.partition, alert.source.offset, alert.id),
            origin=self.baselines.replica)
        self._key_taught[comment] = (alert.key, increment)
        while len(self._key_taught) > self.book.undo_capacity:
            self._key_taught.popitem(last=False)

    def _merge(self, key: str, increment: np.ndarray[Any, np.dtype[np.float64]],
               weight: float) -> None:
        """Add an increment to a key baseline as this replica's contribution (shared
        through the state topic like its accepted comments)."""
        self.baselines.keys[key].learn(increment, weight)

    def _owns(self, topic: str, partition: int) -> bool:
        return TopicPartition(topic, partition) in self.owned()
