"""What a recalibration from live traffic leaves out: comments the detector alerted on, and
comments operators labelled `anomaly` (their latest label).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from detector.config import Settings
from detector.io import records as rec
from detector.io.ranges import read_plan, resolve_plan
from detector.model.labels import Label, parse_label


@dataclass(slots=True)
class Exclusions:
    """Sources and ids to leave out of a calibration of `topic`."""

    topic: str
    sources: set[rec.Position] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    _latest: dict[tuple[str, object], str] = field(default_factory=dict)

    def add_alert(self, value: bytes | None) -> None:
        """An alert record: its comment is left out (unreadable alerts are ignored)."""
        try:
            body = orjson.loads(value or b"")
            source = body["source"]
            if source["topic"] == self.topic:
                self.sources.add(rec.Position(source["topic"], int(source["partition"]),
                                              int(source["offset"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return

    def add_label(self, value: bytes | None) -> None:
        """A label record, in topic order: the latest label of a comment decides."""
        label = parse_label(value)
        if not isinstance(label, Label):
            return
        if label.source is not None:
            self._latest[("source", label.source)] = label.label
        if label.id is not None:
            self._latest[("id", label.id)] = label.label

    def finish(self) -> Exclusions:
        """Turn the latest labels into exclusions (call once every label was added)."""
        for (kind, target), value in self._latest.items():
            if value != "anomaly":
                continue
            if kind == "id":
                self.ids.add(str(target))
            elif isinstance(target, rec.Position) and target.topic == self.topic:
                self.sources.add(target)
        return self

    def excludes(self, comment: rec.Comment) -> bool:
        return comment.source.position in self.sources or (
            comment.id is not None and comment.id in self.ids)


async def read_values(settings: Settings, topic: str, time_from: int | None
                      ) -> list[bytes | None]:
    """The values of `topic` from `time_from` (or its start) to its current end, in
    partition order; an absent topic reads as empty."""
    from detector.io.kafka import topic_partitions

    if not await topic_partitions(settings.kafka, topic):
        return []
    plan = await resolve_plan(settings, topic, time_from=time_from, time_to=None)
    return [record.value async for record in read_plan(settings, plan)]


async def exclusions(settings: Settings, topic: str, time_from: int | None, *,
                     alerted: bool, labelled: bool) -> Exclusions:
    """What to leave out of a calibration of `topic` from `time_from` on."""
    found = Exclusions(topic)
    if alerted:
        for value in await read_values(settings, settings.alerts.topic, time_from):
            found.add_alert(value)
    if labelled:
        for value in await read_values(settings, settings.feedback.topic, time_from):
            found.add_label(value)
    return found.finish()
