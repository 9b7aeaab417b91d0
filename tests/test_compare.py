"""`detector replay --artifact FILE --compare`: the pure diff of two alert sets."""

from __future__ import annotations

from typing import Any

from detector.commands.compare import NO_KEY, diff


def alert(offset: int, key: str | None, partition: int = 0) -> dict[str, Any]:
    return {"id": f"c{offset}", "text": "t" * 300, "similarity": 0.1, "threshold": 0.3,
            "source": {"topic": "comments", "partition": partition, "offset": offset,
                       "timestamp": 0, "key": None},
            "baseline": {"comment_key": key}}


def test_diff_counts_added_and_removed_alerts_per_key_with_examples() -> None:
    current = [alert(1, "a"), alert(2, "a"), alert(3, None), alert(1, "b", partition=1)]
    candidate = [alert(2, "a"), alert(4, "b"), alert(5, "b"), alert(6, None),
                 alert(1, "b", partition=1)]
    report = diff(current, candidate)
    assert report["in_force"] == {"alerts": 4}
    assert report["candidate"] == {"alerts": 5}
    assert report["kept"] == 2
    assert report["added"]["count"] == 3
    assert report["added"]["by_key"] == {NO_KEY: 1, "b": 2}
    assert report["removed"]["by_key"] == {NO_KEY: 1, "a": 1}
    assert [e["source"]["offset"] for e in report["removed"]["examples"]] == [1, 3]
    example = report["added"]["examples"][0]
    assert len(example["text"]) == 200
    assert example["source"] == {"topic": "comments", "partition": 0, "offset": 4}
