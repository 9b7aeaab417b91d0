"""Scoring: embedded comments in, verdicts and the outputs to publish out. Pure, no I/O.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import structlog

from detector.config import Settings
from detector.io import records as rec
from detector.metrics import Metrics
from detector.model.alerts import encode_alert, label_field
from detector.model.baselines import Baselines, Judgement
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref

log = structlog.get_logger("detector.model.scorer")

Vector = npt.NDArray[np.float64]
Embedded = tuple[rec.Comment, Vector | rec.DeadLetter]  # a vector, or why it was refused


@dataclass(frozen=True, slots=True)
class Encoding:
    """Where the outputs go and what they say about the detector that produced them."""

    alerts_topic: str
    scores_topic: str | None  # None: scores are not published
    dead_letter_topic: str
    context: rec.Context

    @classmethod
    def from_settings(cls, settings: Settings, context: rec.Context) -> Encoding:
        alerts = settings.alerts
        return cls(alerts.topic, alerts.scores_topic, alerts.dead_letter_topic, context)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the scorer decided about one record, and what to publish for it."""

    source: rec.Source
    comment_id: str | None = None
    messages: list[rec.Message] = field(default_factory=list)
    similarity: float | None = None  # None: dead-lettered, not scored
    threshold: float | None = None
    alert: bool = False
    updated: bool = False  # the vector was accepted into the centroid
    dead_letter: rec.DeadLetter | None = None
    judged: Judgement | None = None  # how the baselines judged it (None: dead-lettered)


class Scorer:
    """Scores embedded comments in order against their baselines and encodes the outputs."""

    def __init__(self, baselines: Baselines, encoding: Encoding) -> None:
        """`baselines` judge every comment (global and per-key baselines, kNN, explanations)
        and learn from the ones they accept, as their `Policy` says; `encoding` says where
        the outputs go."""
        self.baselines = baselines
        self.encoding = encoding

    @classmethod
    def from_settings(cls, settings: Settings, context: rec.Context, *,
                      baselines: Baselines) -> Scorer:
        """A scorer of `baselines` with the output topics of `settings.alerts`."""
        return cls(baselines, Encoding.from_settings(settings, context))

    @property
    def centroid(self) -> Centroid:
        """The global centroid."""
        return self.baselines.global_.centroid

    @property
    def threshold(self) -> float:
        """The global threshold."""
        return self.baselines.threshold_of(self.baselines.global_)[0]

    def score(self, items: Sequence[Embedded]) -> list[Verdict]:
        """Verdicts for `items`, in order; every accepted comment updates its baselines
        before the next is scored, so batch boundaries do not change the outcome."""
        judgements: list[Judgement | rec.DeadLetter] = []
        for comment, embedded in items:
            if isinstance(embedded, rec.DeadLetter):
                judgements.append(embedded)
                continue
            source = comment.source
            judged = self.baselines.judge(embedded, comment.key, Ref(
                source.topic, source.partition, source.offset, comment.id, comment.text))
            judgements.append(judged)
        # outputs carry each judging baseline's centroid as it is after the batch
        return [self.refuse(j) if isinstance(j, rec.DeadLetter) else self._verdict(c, j)
                for (c, _), j in zip(items, judgements, strict=True)]

    def refuse(self, letter: rec.DeadLetter) -> Verdict:
        """The verdict for a record that cannot be scored: its dead letter."""
        message = (self.encoding.dead_letter_topic, letter.source.key,
                   rec.encode_dead_letter(letter, self.encoding.context))
        return Verdict(letter.source, messages=[message], dead_letter=letter)

    def _verdict(self, comment: rec.Comment, judged: Judgement) -> Verdict:
        if judged.baseline is not None:
            centroid = judged.baseline.centroid
            judged = replace(judged, centroid_version=centroid.version,
                             centroid_count=centroid.weight)
        key = comment.source.key
        messages: list[rec.Message] = []
        if judged.anomaly:
            messages.append((self.encoding.alerts_topic, key, encode_alert(
                comment, judged, method=self.baselines.policy.method,
                ctx=self.encoding.context, calibration=self.baselines.calibration)))
        if self.encoding.scores_topic:
            messages.append((self.encoding.scores_topic, key, rec.encode_score(
                comment, similarity=judged.score, threshold=judged.threshold,
                anomaly=judged.anomaly, updated=judged.accepted,
                centroid_version=judged.centroid_version, label=label_field(judged))))
        return Verdict(comment.source, comment.id, messages, judged.score, judged.threshold,
                       judged.anomaly, judged.accepted, judged=judged)


def record(metrics: Metrics, verdict: Verdict, *, quiet: bool = False) -> None:
    """Count and log one verdict: similarity, alert line (at debug when `quiet`), dead
    letter by reason."""
    letter = verdict.dead_letter
    if letter is not None:
        metrics.dead_letters.labels(reason=letter.reason.split(":")[0]).inc()
        log.warning("dead letter", reason=letter.reason, error=letter.error,
                    topic=letter.source.topic, partition=letter.source.partition,
                    offset=letter.source.offset)
        return
    assert verdict.similarity is not None
    metrics.similarity.observe(verdict.similarity)
    if verdict.alert:
        judged = verdict.judged
        emit = log.debug if quiet else log.info
        emit("alert", id=verdict.comment_id, similarity=round(verdict.similarity, 4),
             threshold=verdict.threshold, partition=verdict.source.partition,
             offset=verdict.source.offset,
             baseline=None if judged is None else judged.judged_by,
             key=None if judged is None or judged.judged_by == "global" else judged.key,
             **({} if judged is None or judged.reason is None else {"label": judged.reason}))
    elif verdict.judged is not None and verdict.judged.reason is not None:
        log.debug("not alerted", id=verdict.comment_id, reason=verdict.judged.reason,
                  similarity=round(verdict.similarity, 4), threshold=verdict.threshold,
                  partition=verdict.source.partition, offset=verdict.source.offset)
