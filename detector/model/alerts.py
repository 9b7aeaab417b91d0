"""The alert record, schema ``detector.alert/v2``: an alert that explains itself. Pure.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from typing import Any

import orjson

from detector.io.records import Comment, Context, Position, utc_now
from detector.model.baselines import Judgement

ALERT_SCHEMA = "detector.alert/v2"


def label_field(judged: Judgement) -> dict[str, Any] | None:
    """The ``label`` field of an alert or score record: the label that decided, if any."""
    match = judged.label
    if match is None:
        return None
    ident = match.ident
    source = ({"topic": ident.topic, "partition": ident.partition, "offset": ident.offset}
              if isinstance(ident, Position) else str(ident))
    return {"kind": match.kind, "source": source, "similarity": match.similarity,
            "reason": judged.reason}


def encode_alert(comment: Comment, judged: Judgement, *, method: str, ctx: Context,
                 detected_at: str | None = None, calibration: str | None = None) -> bytes:
    """The JSON value of an alert for `comment`, judged as `judged`; `calibration` is the
    version of the calibration artifact in force (None: started from a seed file)."""
    nearest: list[dict[str, Any]] = []
    for n in judged.nearest:
        item: dict[str, Any] = {"similarity": n.similarity, "source": {
            "topic": n.ref.topic, "partition": n.ref.partition, "offset": n.ref.offset,
            "id": n.ref.id}}
        if n.ref.text is not None:
            item["text"] = n.ref.text
        nearest.append(item)
    label = label_field(judged)
    extra = {} if label is None else {"label": label}
    return orjson.dumps({**extra,
        "schema": ALERT_SCHEMA,
        "id": comment.id,
        "text": comment.text,
        "similarity": judged.score,
        "threshold": judged.threshold,
        "method": method,
        "centroid_similarity": judged.similarity,
        "baseline": {
            "scope": judged.judged_by,
            "key": judged.key if judged.judged_by == "key" else None,
            "comment_key": judged.key,
            "threshold": judged.threshold,
            "threshold_source": judged.threshold_source,
            "centroid": {"version": judged.centroid_version,
                         "count": judged.centroid_count},
        },
        "calibration": calibration,
        "nearest": nearest,
        "source": comment.source.to_json(),
        "centroid": {"version": judged.centroid_version, "count": judged.centroid_count},
        "model": {"name": ctx.model_name, "dimension": ctx.model_dimension},
        "detector": {"name": ctx.detector_name, "version": ctx.detector_version},
        "detected_at": detected_at or utc_now(),
    })
