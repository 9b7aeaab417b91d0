"""Range parsing shared by calibrate and replay: times, partition bounds, the plan file.

`resolve_plan` itself needs a broker; test_replay.py and test_calibrate_cli.py exercise
it through both commands.
"""

from __future__ import annotations

import pytest

from detector.errors import ConfigError
from detector.io.ranges import PROGRESS_SCHEMA, Plan, parse_bounds, parse_time


class TestParseTime:
    def test_epoch_milliseconds_pass_through(self) -> None:
        assert parse_time("1767225600000") == 1_767_225_600_000

    def test_iso_with_z_offset_and_naive_utc(self) -> None:
        """Z, an explicit offset and a naive time (UTC) give the same instant."""
        assert parse_time("2026-01-01T00:00:00Z") == 1_767_225_600_000
        assert parse_time("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
        assert parse_time("2026-01-01T00:00:00") == 1_767_225_600_000
        assert parse_time("2026-01-01") == 1_767_225_600_000

    @pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "-5", ""])
    def test_anything_else_is_a_config_error(self, text: str) -> None:
        with pytest.raises(ConfigError, match="ISO 8601"):
            parse_time(text)


class TestParseBounds:
    def test_partition_offset_pairs(self) -> None:
        assert parse_bounds(["0:100", "2:7"]) == {0: 100, 2: 7}
        assert parse_bounds([]) == {}

    @pytest.mark.parametrize("item", ["0", "a:1", "0:-1", "0:1:2", ":5"])
    def test_malformed_pairs_are_refused(self, item: str) -> None:
        with pytest.raises(ConfigError, match="PARTITION:OFFSET"):
            parse_bounds([item])


class TestPlan:
    def test_positions_total_and_remaining(self) -> None:
        """positions start at the range start and move with `next`; remaining never < 0."""
        plan = Plan("t", {0: (10, 20), 1: (0, 5)})
        assert (plan.position(0), plan.position(1)) == (10, 0)
        assert plan.total() == plan.remaining() == 15
        plan.next.update({0: 15, 1: 9})
        assert plan.position(0) == 15
        assert plan.remaining() == 5

    def test_progress_file_round_trip(self) -> None:
        plan = Plan("t", {0: (10, 20), 3: (4, 4)}, {0: 12}, {"weight": 1.0})
        body = plan.to_json()
        assert body["schema"] == PROGRESS_SCHEMA
        assert Plan.from_json(body) == plan

    def test_another_file_is_not_a_plan(self) -> None:
        with pytest.raises(ConfigError, match="not a replay progress file"):
            Plan.from_json({"schema": "something/v1", "topic": "t", "ranges": {}, "next": {}})
