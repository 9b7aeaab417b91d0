"""What a recalibration leaves out (detector.calibration.exclusions): alerted comments, and comments
whose latest label is `anomaly`."""

from __future__ import annotations

import orjson

from detector.calibration.exclusions import Exclusions
from detector.io import records as rec


def comment(partition: int, offset: int, cid: str | None = None, topic: str = "comments"
            ) -> rec.Comment:
    return rec.Comment(rec.Source(topic, partition, offset, 0, None), "text", cid)


def label(value: str, **target: object) -> bytes:
    return orjson.dumps({"schema": "detector.feedback/v1", "label": value, **target})


def test_alerted_and_anomaly_labelled_comments_are_left_out() -> None:
    found = Exclusions("comments")
    found.add_alert(orjson.dumps({"source": {"topic": "comments", "partition": 0,
                                             "offset": 3}}))
    found.add_alert(orjson.dumps({"source": {"topic": "other", "partition": 0, "offset": 4}}))
    found.add_alert(b"not json")
    src = {"topic": "comments", "partition": 1, "offset": 9}
    found.add_label(label("anomaly", source=src))
    found.add_label(label("anomaly", id="c7"))
    found.add_label(label("anomaly", id="c8"))
    found.add_label(label("normal", id="c8"))  # the latest label decides
    found.add_label(b"{}")
    found.finish()
    assert found.excludes(comment(0, 3))
    assert not found.excludes(comment(0, 4))
    assert found.excludes(comment(1, 9))
    assert found.excludes(comment(2, 0, "c7"))
    assert not found.excludes(comment(2, 1, "c8"))
    assert not found.excludes(comment(1, 9, topic="other"))
