"""The one progress reporter: a tqdm bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import asyncio
import io

import pytest

from detector.commands import replay
from detector.io.ranges import Plan
from detector.progress import Progress
from tests.helpers import wait_for


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestLines:
    def test_a_line_per_tenth_or_interval_and_at_the_end(self) -> None:
        """not a terminal: lines when another tenth is done or every_s passed, never a bar."""
        out, clock = io.StringIO(), Clock()
        progress = Progress(100, "embedding normal", unit="texts", every_s=10.0, stream=out,
                            clock=clock)
        clock.now += 1
        progress.update(5)  # the first update always reports
        clock.now += 1
        progress.update(7)  # same tenth, interval not over: quiet
        progress.update(10)  # a new tenth
        clock.now += 10
        progress.update(12)  # the interval is over
        clock.now += 1
        progress.update(100)
        progress.close()  # already reported the end: nothing more
        assert out.getvalue().splitlines() == [
            "embedding normal: 5/100 (5%) 5 texts/s, ETA 19s",
            "embedding normal: 10/100 (10%) 5 texts/s, ETA 18s",
            "embedding normal: 12/100 (12%) 1 texts/s, ETA 88s",
            "embedding normal: 100/100 (100%) 8 texts/s, ETA 0s",
        ]
        assert "\r" not in out.getvalue()

    def test_detail_resumed_start_and_a_last_line_when_stopped_early(self) -> None:
        """the rate counts only this run's work; stopping early still reports where it is."""
        out, clock = io.StringIO(), Clock()
        with Progress(1000, "replay", unit="records", initial=400, every_s=2.0, stream=out,
                      clock=clock) as progress:
            clock.now += 2
            progress.update(500, "p0:300/500 p1:200/500")
            clock.now += 1
            progress.update(550, "p0:350/500 p1:200/500")
        assert out.getvalue().splitlines() == [
            "replay: 500/1000 (50%) 50 records/s, ETA 10s  [p0:300/500 p1:200/500]",
            "replay: 550/1000 (55%) 50 records/s, ETA 9s",
        ]

    def test_nothing_to_do_reports_nothing(self) -> None:
        """all texts cached: no progress output at all, on a terminal or not."""
        for out in (io.StringIO(), FakeTerminal()):
            with Progress(0, "embedding anomalies", stream=out) as progress:
                progress.update(0)
            assert out.getvalue() == ""


class TestBar:
    def test_a_terminal_gets_a_bar_redrawn_in_place(self) -> None:
        out = FakeTerminal()
        with Progress(50, "replay", unit="records", stream=out) as progress:
            assert progress.bar is not None
            progress.update(10, "p0:10/50")
            progress.update(50, "p0:50/50")
        text = out.getvalue()
        assert text.startswith("\r")
        last = text.rstrip("\n").split("\r")[-1]
        assert last.startswith("replay: 100%|")
        assert "50/50" in last
        assert "p0:50/50" in last
        assert text.endswith("\n")  # the bar is left on screen, the next line starts clean
        assert "records/s, ETA" not in text  # no plain lines on a terminal

    def test_a_resumed_run_starts_the_bar_where_it_was(self) -> None:
        out = FakeTerminal()
        with Progress(200, "replay", unit="records", initial=150, stream=out):
            pass
        assert "150/200" in out.getvalue().rstrip("\n").split("\r")[-1]


async def test_replay_reports_its_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """replay's reporter shows the plan's records done with per-partition counts, from a
    resumed position, and a last line when it is stopped."""
    plan = Plan("t", {0: (0, 10), 1: (5, 15)}, {0: 4})
    seen: list[str] = []

    def shown(text: str) -> bool:
        seen.append(capsys.readouterr().err)
        return text in "".join(seen)

    reporter = asyncio.create_task(replay._report(plan, enabled=True))
    try:
        await wait_for(lambda: shown("replay: 4/20 (20%)"), 10, "the first line")
        plan.next.update({0: 10, 1: 8})
        await wait_for(lambda: shown("[p0:10/10 p1:3/10]"), 10, "the moved partitions")
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    assert "replay: 13/20 (65%)" in "".join(seen) + capsys.readouterr().err
