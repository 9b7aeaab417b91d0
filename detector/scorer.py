"""Scoring: embedded comments in, verdicts and the outputs to publish out. Pure, no I/O.

`Scorer.score` takes a batch of embedded items in submission order — a comment with its
unit vector, or a comment whose text the embedding API refused (a `DeadLetter`) — and
returns one `Verdict` per item, in the same order: the similarity to the baseline, whether
it is an alert, whether it updated the centroid, and the messages (alert, score, dead
letter) to publish for it. Each confident vector updates the centroid before the next one
is scored, so cutting the same items into other batches gives the same verdicts and the
same centroid (the alert and score messages carry the centroid version after their batch).

Two seams are where the next features land: `baseline_for` says which baseline judges a
comment (today: the one global centroid and threshold), and `_judge` says how a group of
vectors is scored against a baseline (today: cosine similarity to the centroid, gated
updates at ``threshold + margin``).

`record` is the accounting the pipeline does for each verdict (metrics and log lines);
it lives here, next to what it accounts for, so that the `Scorer` itself stays pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog

from detector import records as rec
from detector.centroid import Centroid, Scored
from detector.config import Settings
from detector.metrics import Metrics

log = structlog.get_logger("detector.scorer")

Vector = npt.NDArray[np.float64]
Embedded = tuple[rec.Comment, Vector | rec.DeadLetter]  # a vector, or why it was refused
# Told of local centroid updates: (S before, w before, number of updates).
OnUpdate = Callable[[npt.NDArray[np.float64], float, int], None]


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


@dataclass(slots=True)
class Baseline:
    """What a comment is judged against: a centroid of normal comments and its threshold."""

    centroid: Centroid
    threshold: float


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


class Scorer:
    """Scores embedded comments in order against the baseline and encodes the outputs."""

    def __init__(self, centroid: Centroid, threshold: float, *, margin: float, update: bool,
                 encoding: Encoding, on_update: OnUpdate | None = None) -> None:
        """`update` switches centroid updates on; a vector updates it when its similarity
        is at least ``threshold + margin``. `on_update` is called once per `score` call
        that updated the centroid, with its sum and weight before that call and the
        number of updates (state sync turns that into this replica's contribution)."""
        self.baseline = Baseline(centroid, threshold)
        self.margin = margin
        self.update = update
        self.encoding = encoding
        self.on_update = on_update

    @classmethod
    def from_settings(cls, settings: Settings, centroid: Centroid, threshold: float,
                      context: rec.Context, on_update: OnUpdate | None = None) -> Scorer:
        """A scorer with `settings.scoring` and the output topics of `settings.alerts`."""
        return cls(centroid, threshold, margin=settings.scoring.margin,
                   update=settings.scoring.update,
                   encoding=Encoding.from_settings(settings, context), on_update=on_update)

    @property
    def centroid(self) -> Centroid:
        return self.baseline.centroid

    @property
    def threshold(self) -> float:
        return self.baseline.threshold

    def baseline_for(self, comment: rec.Comment) -> Baseline:
        """The baseline that judges `comment` (one global baseline today)."""
        return self.baseline

    def score(self, items: Sequence[Embedded]) -> list[Verdict]:
        """Verdicts for `items`, in order; updates the centroid as it goes.

        Items are grouped by the baseline that judges them and each group is scored in
        submission order (baselines are independent, so this is the same as one pass).
        """
        groups: dict[int, tuple[Baseline, list[int], list[Vector]]] = {}
        for i, (comment, embedded) in enumerate(items):
            if not isinstance(embedded, rec.DeadLetter):
                baseline = self.baseline_for(comment)
                group = groups.setdefault(id(baseline), (baseline, [], []))
                group[1].append(i)
                group[2].append(embedded)
        judged: dict[int, tuple[Baseline, float, bool]] = {}
        for baseline, rows, vectors in groups.values():
            scored = self._judge(baseline, np.stack(vectors))
            for i, sim, upd in zip(rows, scored.similarities.tolist(),
                                   scored.updated.tolist(), strict=True):
                judged[i] = (baseline, sim, upd)
        verdicts = []
        for i, (comment, embedded) in enumerate(items):
            if isinstance(embedded, rec.DeadLetter):
                verdicts.append(self.refuse(embedded))
            else:
                verdicts.append(self._verdict(comment, *judged[i]))
        return verdicts

    def refuse(self, letter: rec.DeadLetter) -> Verdict:
        """The verdict for a record that cannot be scored: its dead letter."""
        message = (self.encoding.dead_letter_topic, letter.source.key,
                   rec.encode_dead_letter(letter, self.encoding.context))
        return Verdict(letter.source, messages=[message], dead_letter=letter)

    def _judge(self, baseline: Baseline, vectors: npt.NDArray[np.float64]) -> Scored:
        """Similarities of `vectors` to the baseline, each confident one updating it first."""
        centroid = baseline.centroid
        before = (centroid.sum.copy(), centroid.weight) if self.on_update else None
        scored = centroid.score(vectors, baseline.threshold, self.margin, update=self.update)
        accepted = int(scored.updated.sum())
        if accepted and self.on_update is not None and before is not None:
            self.on_update(before[0], before[1], accepted)
        return scored

    def _verdict(self, comment: rec.Comment, baseline: Baseline, similarity: float,
                 updated: bool) -> Verdict:
        threshold = baseline.threshold
        alert = similarity < threshold
        key = comment.source.key
        centroid = baseline.centroid
        messages: list[rec.Message] = []
        if alert:
            messages.append((self.encoding.alerts_topic, key, rec.encode_alert(
                comment, similarity=similarity, threshold=threshold,
                centroid_version=centroid.version, centroid_count=centroid.weight,
                ctx=self.encoding.context)))
        if self.encoding.scores_topic:
            messages.append((self.encoding.scores_topic, key, rec.encode_score(
                comment, similarity=similarity, threshold=threshold, anomaly=alert,
                updated=updated, centroid_version=centroid.version)))
        return Verdict(comment.source, comment.id, messages, similarity, threshold, alert, updated)


def record(metrics: Metrics, verdict: Verdict) -> None:
    """Count and log one verdict: similarity, alert line, dead letter by reason."""
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
        log.info("alert", id=verdict.comment_id, similarity=round(verdict.similarity, 4),
                 threshold=verdict.threshold, partition=verdict.source.partition,
                 offset=verdict.source.offset)
