"""Every command helps before it fails: a description, a help text for each option with
its default, the exit codes in the epilog, and shell completion (detector.cli)."""

from __future__ import annotations

import argparse

import pytest

from detector.cli import build_parser, main
from detector.exits import MEANINGS

PARSER = build_parser()
SUBCOMMANDS: dict[str, argparse.ArgumentParser] = next(
    a.choices for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))


class TestHelp:
    @pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
    def test_every_command_has_a_description_and_exit_codes(self, name: str) -> None:
        """the description says what it does; the epilog lists its exit codes."""
        command = SUBCOMMANDS[name]
        assert command.description
        assert command.epilog is not None
        assert command.epilog.startswith("exit codes:")
        assert "  0    success" in command.epilog

    @pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
    def test_every_option_has_help_and_its_default(self, name: str) -> None:
        """each option has a help text; a default worth showing appears in --help."""
        command = SUBCOMMANDS[name]
        text = command.format_help()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}"
            default = action.default
            if action.option_strings and default not in (None, False, [],
                                                         argparse.SUPPRESS):
                shown = f"(default:{default})".replace(" ", "")
                assert "default" in action.help or shown in "".join(text.split()), \
                    f"{name} {action.option_strings}"

    def test_every_exit_code_has_a_meaning_in_the_top_level_help(self) -> None:
        """`detector --help` lists all exit codes."""
        text = PARSER.format_help()
        for code in MEANINGS:
            assert f"  {code:<4} " in text


class TestCompletion:
    @pytest.mark.parametrize("shell", ["bash", "zsh"])
    def test_completion_scripts_name_every_command(
            self, shell: str, capsys: pytest.CaptureFixture[str]) -> None:
        """`detector completion SHELL` prints a script that knows every subcommand and
        needs no configuration."""
        assert main(["--config", "/nonexistent.yaml", "completion", shell]) == 0
        script = capsys.readouterr().out
        assert "detector" in script
        for name in SUBCOMMANDS:
            assert name in script
        assert "--offline" in script
