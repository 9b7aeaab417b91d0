"""`detector replay --artifact FILE --compare`: the pure diff of two alert sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.cli import build_parser
from detector.commands import compare as compare_module
from detector.commands.compare import NO_KEY, check_bounds, diff, with_moves
from detector.config import Settings
from detector.exits import EXIT_OK, EXIT_OUT_OF_BOUNDS, EXIT_USAGE


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


def report(in_force: int, candidate: int, before: float, after: float) -> dict[str, Any]:
    return with_moves({"in_force": {"alerts": in_force, "threshold": before},
                       "candidate": {"alerts": candidate, "threshold": after}})


def test_bounds_on_the_alert_ratio_and_the_threshold_move() -> None:
    """The ratio is add-one smoothed and bounded both ways ([1/R, R]); the threshold move
    is bounded in absolute value; no bound given, nothing is checked."""
    same = report(9, 9, 0.30, 0.30)
    assert (same["alert_ratio"], same["threshold_move"]) == (1.0, 0.0)
    assert check_bounds(same, max_alert_ratio=2, max_threshold_move=0.01)["within"]
    more = report(9, 29, 0.30, 0.32)  # (29 + 1) / (9 + 1) = 3
    assert more["alert_ratio"] == pytest.approx(3.0)
    assert more["threshold_move"] == pytest.approx(0.02)
    bounds = check_bounds(more, max_alert_ratio=2, max_threshold_move=0.01)
    assert not bounds["within"]
    assert [v.split()[0] for v in bounds["violations"]] == ["alert", "threshold"]
    assert check_bounds(more, max_alert_ratio=3, max_threshold_move=0.03)["within"]
    fewer = report(29, 9, 0.30, 0.25)  # a third as many alerts, threshold down 0.05
    assert not check_bounds(fewer, max_alert_ratio=2, max_threshold_move=None)["within"]
    assert not check_bounds(fewer, max_alert_ratio=None, max_threshold_move=0.04)["within"]
    assert check_bounds(fewer, max_alert_ratio=None, max_threshold_move=None)["within"]
    assert report(0, 0, 0.3, 0.3)["alert_ratio"] == 1.0  # no alerts on either side


def test_compare_exits_6_outside_the_bounds(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """`replay --compare` with bounds writes the report with its `bounds` section and
    exits EXIT_OUT_OF_BOUNDS when the candidate is outside them, 0 within; bounds
    without --compare, or a ratio below 1, are usage errors."""
    async def fake_compare(*_: Any, **__: Any) -> dict[str, Any]:
        out = report(10, 40, 0.30, 0.31)
        out["range"] = {"records": 1000}
        out["added"], out["removed"] = {"count": 30}, {"count": 0}
        return out

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    out = tmp_path / "compare.json"
    base = ["replay", "--artifact", "new.json", "--compare", "--output", str(out)]
    settings = Settings()

    def run(*extra: str) -> int:
        args = build_parser().parse_args([*base, *extra])
        code: int = args.func(args, settings)
        return code

    assert run("--max-alert-ratio", "2") == EXIT_OUT_OF_BOUNDS
    body = orjson.loads(out.read_bytes())
    assert body["bounds"]["within"] is False
    assert body["alert_ratio"] == pytest.approx(41 / 11)
    assert run("--max-alert-ratio", "4", "--max-threshold-move", "0.05") == EXIT_OK
    assert orjson.loads(out.read_bytes())["bounds"]["within"] is True
    assert run() == EXIT_OK
    assert "bounds" not in orjson.loads(out.read_bytes())
    assert run("--max-alert-ratio", "0.5") == EXIT_USAGE
    args = build_parser().parse_args(["replay", "--max-threshold-move", "0.1"])
    assert args.func(args, settings) == EXIT_USAGE
