"""Operator labels in the daemon: every replica reads `feedback.topic` and applies the
labels that are its own (detector.model.labels holds the pure rules).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
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
from detector.model.labels import AlertCache, CachedAlert, Label, LabelBook, parse_label
from detector.model.reservoir import Ref
from detector.model.scorer import Embedded, Verdict
from detector.state.store import SharedCentroid

log = structlog.get_logger("detector.operating.labels")

Emit = Callable[[list[rec.Message]], None]


class FeedbackStage:
    """Caches alert embeddings, reads labels, applies this replica's ones."""

    def __init__(self, settings: Settings, baselines: Baselines, metrics: Metrics, *,
                 embedder: Embedder, emit: Emit, context: rec.Context,
                 owned: Callable[[], frozenset[TopicPartition]] = frozenset,
                 shared: SharedCentroid | None = None) -> None:
        """`owned` names the input partitions this replica owns now (the pipeline's)."""
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
                embedded, verdict.similarity, comment.key))

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
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def handle(self, partition: int, offset: int, timestamp: int, key: bytes | None,
                     value: bytes | None) -> str:
        """Apply one label record if it is this replica's; returns what happened (the
        outcome; the metric and the debug log also say why, see `_handle`)."""
        outcome, reason = await self._handle(partition, offset, timestamp, key, value)
        self.positions[partition] = offset + 1
        self.metrics.feedback_labels.labels(outcome=outcome, reason=reason).inc()
        if outcome in ("skipped", "unresolved"):
            log.debug("label not applied", outcome=outcome, reason=reason,
                      partition=partition, offset=offset)
        return outcome

    async def _handle(self, partition: int, offset: int, timestamp: int, key: bytes | None,
                      value: bytes | None) -> tuple[str, str]:
        """(outcome, reason). Applied labels (taught, untaught, excluded, unchanged, and
        unresolved from the book) give how the comment was found: ``cached`` or ``text``;
        refused ones their dead-letter reason; the others:

        * skipped ``unknown_id``: no source, and the id is not in this replica's cache
          (another replica's alert, or one nobody caches: no replica can tell which);
        * skipped ``other_topic``: the source is not on the input topic;
        * skipped ``unknown_partition``: the input topic has no such partition;
        * skipped ``other_replica``: another replica owns the source partition;
        * unresolved ``not_cached``: this replica owns the source partition, the alert is
          no longer cached and the label has no text to embed.
        """
        parsed = parse_label(value)
        if not isinstance(parsed, Label):
            if self._owns(self.settings.input.topic, partition % self.input_partitions):
                source = rec.Source(self.settings.feedback.topic, partition, offset,
                                    timestamp, key)
                letter = rec.DeadLetter(source, parsed.reason, parsed.error, value)
                self.metrics.dead_letters.labels(reason=parsed.reason).inc()
                self.emit([(self.settings.alerts.dead_letter_topic, key,
                            rec.encode_dead_letter(letter, self.context))])
                log.warning("label refused", reason=parsed.reason, error=parsed.error,
                            partition=partition, offset=offset)
            return "refused", parsed.reason
        alert = self.cache.find(parsed)
        if alert is not None:
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
        if parsed.text is None:
            if parsed.label == "normal":  # the book counts it (`Precision.unresolved`), or
                # says unchanged when the comment's latest label is normal already
                return self.book.apply(parsed, self.baselines.global_.centroid), "not_cached"
            return "unresolved", "not_cached"
        embedding = np.asarray((await self.embedder.embed([parsed.text]))[0],
                               dtype=np.float64)
        return self._apply(parsed, None, embedding), "text"

    def _apply(self, label: Label, alert: CachedAlert | None,
               embedding: np.ndarray[Any, np.dtype[np.float64]] | None) -> str:
        glob = self.baselines.global_
        centroid = glob.centroid
        before = (centroid.sum.copy(), centroid.weight)
        outcome = self.book.apply(label, centroid, alert=alert, embedding=embedding)
        if outcome in ("taught", "untaught"):
            glob.count_own(before[0], before[1])
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

    def _teach_key(self, label: Label, alert: CachedAlert | None, outcome: str) -> None:
        """Apply a (un)teaching to the alert's key baseline too, when it is held."""
        comment = ("source", *alert.source.astuple()) if alert is not None else None
        if comment is None:
            return
        if outcome == "untaught":
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
        baseline = self.baselines.keys[key]
        baseline.centroid.merge(increment, weight)
        baseline.own.sum += increment
        baseline.own.weight += weight
        baseline.own.updates += 1

    def _owns(self, topic: str, partition: int) -> bool:
        return TopicPartition(topic, partition) in self.owned()
