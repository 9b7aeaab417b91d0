"""The command line itself (detector.cli): bad arguments, where --config goes, and the
defaults it takes from the settings. No broker: the commands are replaced by recorders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.cli import build_parser, main
from detector.commands import calibrate, replay
from detector.config import Settings
from detector.exits import EXIT_USAGE


@pytest.fixture
def called(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, Any]]:
    """The (settings, options) each command was called with; the commands do nothing."""
    calls: list[tuple[Settings, Any]] = []

    def record(settings: Settings, opts: Any) -> int:
        calls.append((settings, opts))
        return 0

    monkeypatch.setattr(calibrate, "command", record)
    monkeypatch.setattr(replay, "command", record)
    return calls


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI on a bad argument: exit 2 and the one error line (no traceback)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error:" in line]
    return line


class TestBadArguments:
    @pytest.mark.parametrize(("argv", "flag"), [
        (["replay", "--partitions", "0,a"], "--partitions"),
        (["replay", "--partitions", "0,,1"], "--partitions"),
        (["replay", "--partitions", "-1"], "--partitions"),
        (["replay", "--from", "yesterday"], "--from"),
        (["replay", "--to", "2026-13-01"], "--to"),
        (["replay", "--start", "0-100"], "--start"),
        (["replay", "--end", "a:1"], "--end"),
        (["calibrate", "--topic", "t", "--from", "soon"], "--from"),
    ])
    def test_a_bad_value_is_a_usage_error_naming_the_flag(
        self, argv: list[str], flag: str, capsys: pytest.CaptureFixture[str],
        called: list[tuple[Settings, Any]],
    ) -> None:
        """a value the flag cannot take exits 2 with one error line naming the flag and
        the value, before any command runs."""
        line = usage_error(capsys, *argv)
        assert f"argument {flag}" in line
        assert argv[-1] in line
        assert called == []

    def test_good_ranges_reach_the_command_parsed(
        self, called: list[tuple[Settings, Any]]
    ) -> None:
        """partitions, times and bounds arrive as numbers in the replay options."""
        assert main(["replay", "--partitions", "2,0", "--from", "1000", "--to",
                     "1970-01-01T00:00:02Z", "--start", "0:5", "--start", "2:7",
                     "--end", "0:9"]) == 0
        [(_, opts)] = called
        assert isinstance(opts, replay.ReplayOptions)
        assert opts.partitions == [2, 0]
        assert (opts.time_from, opts.time_to) == (1000, 2000)
        assert (opts.starts, opts.ends) == ({0: 5, 2: 7}, {0: 9})


class TestConfigFlag:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        path = tmp_path / "other.yaml"
        path.write_text("name: from-the-other-file\n")
        return path

    @pytest.mark.parametrize("before", [True, False])
    def test_config_before_or_after_the_command(
        self, config: Path, before: bool, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`detector --config F config` and `detector config --config F` both read F."""
        argv = ["--config", str(config), "config", "--json"] if before else \
            ["config", "--json", "--config", str(config)]
        assert main(argv) == 0
        assert orjson.loads(capsys.readouterr().out)["settings"]["name"] == "from-the-other-file"

    @pytest.mark.parametrize("command", [["run"], ["config"], ["replay"],
                                         ["calibrate", "--normal", "n.jsonl"]])
    def test_every_command_takes_it_and_the_one_after_wins(self, command: list[str]) -> None:
        """each subcommand accepts --config/-c; given on both sides, the later one counts;
        given only before, the subcommand does not reset it."""
        parser = build_parser()
        assert parser.parse_args([*command, "-c", "b.yaml"]).config == "b.yaml"
        assert parser.parse_args(["-c", "a.yaml", *command, "--config", "b.yaml"]
                                 ).config == "b.yaml"
        assert parser.parse_args(["-c", "a.yaml", *command]).config == "a.yaml"
        assert parser.parse_args(command).config is None


class TestCalibrateDefaults:
    def test_target_fpr_defaults_to_the_setting(
        self, monkeypatch: pytest.MonkeyPatch, called: list[tuple[Settings, Any]]
    ) -> None:
        """without --target-fpr calibrate aims at scoring.target_fpr; the flag overrides."""
        monkeypatch.setenv("DETECTOR_SCORING__TARGET_FPR", "0.05")
        assert main(["calibrate", "--normal", "n.jsonl"]) == 0
        assert main(["calibrate", "--normal", "n.jsonl", "--target-fpr", "0.02"]) == 0
        [(settings, default), (_, explicit)] = called
        assert settings.scoring.target_fpr == 0.05
        assert isinstance(default, calibrate.CalibrateOptions)
        assert default.target_fpr == 0.05
        assert explicit.target_fpr == 0.02

    def test_the_help_says_where_the_default_comes_from(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help names scoring.target_fpr as the default, not a number."""
        with pytest.raises(SystemExit):
            main(["calibrate", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "(default: scoring.target_fpr)" in help_text
