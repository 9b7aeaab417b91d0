"""The `detector` command line: parse, load settings once, call one command with them.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import shtab
from aiokafka.errors import KafkaError

from detector import __version__
from detector.commands import calibrate, check, compare, effective, replay
from detector.commands import run as app
from detector.config import Settings, config_file, load_settings
from detector.errors import ConfigError, DetectorError, FatalEmbeddingError
from detector.exits import (
    EXIT_CHECK_FAILED,
    EXIT_FATAL_EMBEDDING,
    EXIT_INTERRUPTED,
    EXIT_KAFKA,
    EXIT_OK,
    EXIT_OUT_OF_BOUNDS,
    EXIT_TRANSACTION,
    EXIT_USAGE,
    MEANINGS,
)
from detector.io.ranges import parse_bounds, parse_time
from detector.logs import configure_logging

CONFIG_HELP = "YAML configuration file (default: $DETECTOR_CONFIG, else config/detector.yaml)"
_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# Every command can fail on its configuration, on its start, or be interrupted.
_COMMON = (EXIT_OK, EXIT_USAGE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's lines, and appends an option's default to its help unless the
    help already names it or there is none worth showing (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == []
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: {default})"


def exit_codes(*codes: int) -> str:
    """An epilog listing `codes` with their meanings (detector.exits)."""
    lines = ["exit codes:"] + [f"  {code:<4} {MEANINGS[code]}" for code in codes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detector", formatter_class=HelpFormatter,
        description="Streaming anomaly detector for text comments on Kafka.",
        epilog=exit_codes(*sorted(MEANINGS)),
    )
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    parser.set_defaults(settings=True)
    _files(parser.add_argument("--config", "-c", default=None, help=CONFIG_HELP))
    # --config is also accepted after the subcommand; there it has no default, so that
    # when it is given only before the subcommand, the subcommand does not reset it
    config = argparse.ArgumentParser(add_help=False)
    _files(config.add_argument("--config", "-c", default=argparse.SUPPRESS, help=CONFIG_HELP))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        sub, config, "run", help="consume, score and publish alerts until SIGTERM",
        description="The daemon: consume comments, embed and score them, publish alerts, "
                    "dead letters and scores, commit offsets. SIGTERM/SIGINT drain and "
                    "stop; a second signal exits at once.",
        codes=(*_COMMON, EXIT_FATAL_EMBEDDING, EXIT_TRANSACTION, EXIT_KAFKA))
    run.set_defaults(func=_cmd_run)

    show = _command(
        sub, config, "config", help="print the effective configuration (secrets masked)",
        description="Print the configuration the detector would use: the file, DETECTOR_* "
                    "variables and defaults merged, derived values filled in, each with "
                    "where it came from. Secrets show only whether they are set.",
        codes=_COMMON)
    show.add_argument("--json", action="store_true",
                      help="JSON ({settings, sources}) instead of commented YAML")
    show.set_defaults(func=_cmd_config)

    verify = _command(
        sub, config, "check", help="verify the configuration against files, API and brokers",
        description="Check, without consuming or producing, that the files the "
                    "configuration names exist and parse, the calibration artifact fits "
                    "the embedder, the API key is there and one embedding call succeeds, "
                    "the brokers answer with the configured security, the input topic and "
                    "group can be read, and the output topics exist or may be created. "
                    "One line per check.",
        codes=(*_COMMON, EXIT_CHECK_FAILED))
    verify.add_argument("--offline", action="store_true",
                        help="skip the embedding call (no API request, no model load)")
    verify.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the brokers")
    verify.set_defaults(func=_cmd_check)

    _add_replay(sub, config)
    _add_calibrate(sub, config)

    completion = _command(
        sub, None, "completion", help="print a shell completion script",
        description="Print the completion script for bash or zsh. bash: "
                    "`detector completion bash > /etc/bash_completion.d/detector`; zsh: "
                    "`detector completion zsh > \"${fpath[1]}/_detector\"`.",
        codes=(EXIT_OK, EXIT_USAGE))
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    completion.set_defaults(func=_cmd_completion, settings=False)
    for command in sub.choices.values():
        for action in command._actions:
            if action.type is Path:
                _files(action, directory=action.dest.endswith("_dir"))
    return parser


def _command(sub: _Sub, config: argparse.ArgumentParser | None, name: str, *, help: str,
             description: str, codes: tuple[int, ...]) -> argparse.ArgumentParser:
    """A subcommand with a description, defaults in its help and its exit codes."""
    return sub.add_parser(name, help=help, description=description,
                          parents=[config] if config is not None else [],
                          formatter_class=HelpFormatter, epilog=exit_codes(*codes))


def _files(action: argparse.Action, *, directory: bool = False) -> None:
    """Mark an option's value as a file (or directory) name for shell completion."""
    action.complete = shtab.DIRECTORY if directory else shtab.FILE  # type: ignore[attr-defined]


def _partitions(text: str) -> list[int]:
    """``"0,2"`` → ``[0, 2]`` (a `type=` of argparse)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        msg = f"expected comma-separated partition numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return [int(part) for part in parts]


def _time(text: str) -> int:
    """Epoch ms of an ISO 8601 time or a number of ms (a `type=` of argparse)."""
    try:
        return parse_time(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bound(text: str) -> tuple[int, int]:
    """``"0:100"`` → ``(0, 100)`` (a `type=` of argparse)."""
    try:
        [(partition, offset)] = parse_bounds([text]).items()
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return partition, offset


def _add_replay(sub: _Sub, config: argparse.ArgumentParser) -> None:
    p = _command(
        sub, config, "replay", help="re-score a range of a topic without touching the live group",
        description="Re-score a bounded range of a topic with the live pipeline code. "
                    "Without --alerts-topic or --output, alerts are written to stdout.",
        codes=(*_COMMON, EXIT_FATAL_EMBEDDING, EXIT_KAFKA, EXIT_OUT_OF_BOUNDS,
               EXIT_INTERRUPTED))
    p.add_argument("--topic", help="topic to replay (default: input.topic)")
    p.add_argument("--from", dest="time_from", type=_time,
                   help="start time (ISO 8601, UTC if no zone, or epoch ms)")
    p.add_argument("--to", dest="time_to", type=_time, help="end time, exclusive")
    p.add_argument("--start", action="append", type=_bound, default=[], metavar="P:OFFSET",
                   help="explicit start offset of a partition (repeatable)")
    p.add_argument("--end", action="append", type=_bound, default=[], metavar="P:OFFSET",
                   help="explicit end offset (exclusive) of a partition (repeatable)")
    p.add_argument("--partitions", type=_partitions,
                   help="comma-separated partitions to replay (default: all)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--alerts-topic", help="write alerts to this topic")
    out.add_argument("--output", type=Path, help="write alerts to this JSONL file")
    out.add_argument("--dry-run", action="store_true", help="print only the summary")
    p.add_argument("--scores-file", type=Path, help="also write every score to this JSONL file")
    p.add_argument("--state", choices=["frozen", "evolving"], default="frozen",
                   help="frozen: score against the starting centroid; evolving: update it "
                        "as the live daemon would (default: frozen)")
    p.add_argument("--snapshot", metavar="NAME",
                   help="start from the state snapshot of detector NAME instead of the "
                        "calibration artifact or seed file")
    p.add_argument("--force", action="store_true",
                   help="allow writing to the live alerts topic")
    p.add_argument("--progress-file", type=Path, default=Path("replay-progress.json"),
                   help="where progress is saved")
    p.add_argument("--resume", action="store_true",
                   help="continue the replay saved in --progress-file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--artifact", type=Path,
                   help="score with this calibration artifact (instead of "
                        "scoring.calibration_file)")
    p.add_argument("--compare", action="store_true",
                   help="with --artifact: report which alerts it adds and removes against "
                        "the artifact in force (JSON to --output or stdout; frozen)")
    p.add_argument("--max-alert-ratio", type=float, metavar="R",
                   help="with --compare: exit 6 unless (candidate alerts + 1) / (alerts in "
                        "force + 1) is within [1/R, R]")
    p.add_argument("--max-threshold-move", type=float, metavar="D",
                   help="with --compare: exit 6 if the candidate's threshold differs from "
                        "the one in force by more than D")
    p.set_defaults(func=_cmd_replay)


def _add_calibrate(sub: _Sub, config: argparse.ArgumentParser) -> None:
    p = _command(
        sub, config, "calibrate",
        help="choose the threshold on your own data and write an artifact",
        description="Build the centroid on a training split of normal comments and choose "
                    "the threshold on held-out normals (and labelled anomalies if given).",
        codes=(*_COMMON, EXIT_FATAL_EMBEDDING, EXIT_KAFKA, EXIT_INTERRUPTED))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--normal", type=Path, help="JSONL file of normal comments")
    src.add_argument("--topic", help="read normal comments from this topic (no group)")
    src.add_argument("--artifact", type=Path,
                     help="with --publish: publish this existing artifact, calibrate nothing")
    p.add_argument("--from", dest="time_from", type=_time, help="with --topic: start time")
    p.add_argument("--to", dest="time_to", type=_time,
                   help="with --topic: end time (exclusive)")
    p.add_argument("--last-hours", type=float, metavar="H",
                   help="with --topic: the last H hours (instead of --from/--to)")
    p.add_argument("--exclude-alerted", action="store_true",
                   help="with --topic: leave out comments alerts.topic alerted on")
    p.add_argument("--exclude-labelled", action="store_true",
                   help="with --topic: leave out comments labelled anomaly on feedback.topic")
    p.add_argument("--anomalies", type=Path, help="JSONL file of labelled anomalies")
    p.add_argument("--label-field", help="field marking anomalies (truthy) in --normal")
    p.add_argument("--target-fpr", type=float, default=None,
                   help="false-positive rate on held-out normals "
                        "(default: scoring.target_fpr)")
    p.add_argument("--select", choices=["target_fpr", "best_f1", "target_precision"],
                   default="target_fpr", help="how to choose the threshold "
                   "(best_f1 and target_precision need labelled anomalies)")
    p.add_argument("--target-precision", type=float, default=0.9,
                   help="with --select target_precision: the precision to reach")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="share of normals held out to choose the threshold")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the train/held-out split and the bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the CI")
    p.add_argument("--reference-size", type=int, default=2000, metavar="N",
                   help="held-out normals kept in the artifact as the reference sample the "
                        "daemon re-derives the threshold from (a random subset; default "
                        "2000, 0: none)")
    p.add_argument("--key-reference-size", type=int, default=1000, metavar="N",
                   help="the same per key baseline, from its own held-out normals "
                        "(default 1000)")
    p.add_argument("--out", type=Path, default=Path("calibration.json"),
                   help="where the calibration artifact is written")
    p.add_argument("--report-dir", type=Path, default=None,
                   help="write report.md, report.json and PNG plots here")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/embeddings"),
                   help="SQLite cache of embeddings: a re-run makes no embedding calls")
    p.add_argument("--publish", action="store_true",
                   help="put the artifact on the state topic: running replicas adopt it "
                        "without a restart")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_run(_args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(app.run(settings, handle_signals=True))


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    file = config_file(args.config)
    leaves = effective.values(settings, file)
    sys.stdout.write(effective.as_json(leaves) if args.json else effective.as_yaml(leaves, file))
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    if args.timeout <= 0:
        sys.stderr.write("detector: error: --timeout must be positive\n")
        return EXIT_USAGE
    return check.command(settings, offline=args.offline, timeout_s=args.timeout,
                         out=sys.stdout)


def _cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.compare and (args.artifact is None or args.alerts_topic or args.dry_run
                         or args.resume or args.snapshot or args.state != "frozen"):
        sys.stderr.write("detector: error: --compare needs --artifact and replays frozen: "
                         "no --alerts-topic, --dry-run, --resume, --snapshot or --state\n")
        return EXIT_USAGE
    bounds = compare.Bounds(args.max_alert_ratio, args.max_threshold_move)
    if bounds.set and not args.compare:
        sys.stderr.write("detector: error: --max-alert-ratio and --max-threshold-move are "
                         "for --compare\n")
        return EXIT_USAGE
    if (args.max_alert_ratio is not None and args.max_alert_ratio < 1) or (
            args.max_threshold_move is not None and args.max_threshold_move < 0):
        sys.stderr.write("detector: error: --max-alert-ratio must be at least 1 and "
                         "--max-threshold-move at least 0\n")
        return EXIT_USAGE
    opts = replay.ReplayOptions(
        topic=args.topic or settings.input.topic,
        time_from=args.time_from, time_to=args.time_to,
        starts=dict(args.start), ends=dict(args.end), partitions=args.partitions,
        alerts_topic=args.alerts_topic, output=args.output, scores_file=args.scores_file,
        dry_run=args.dry_run, state=args.state, snapshot=args.snapshot, force=args.force,
        progress_file=args.progress_file, resume=args.resume, show_progress=not args.quiet,
        artifact=args.artifact,
    )
    if args.compare:
        return compare.command(settings, opts, bounds)
    return replay.command(settings, opts)


def _cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    target_fpr: float = settings.scoring.target_fpr if args.target_fpr is None \
        else args.target_fpr
    if not 0 < target_fpr < 1 or not 0 < args.holdout < 1:
        sys.stderr.write("detector: error: --target-fpr and --holdout must be in (0, 1)\n")
        return EXIT_USAGE
    ranged = args.time_from is not None or args.time_to is not None
    if args.topic is None and (ranged or args.last_hours is not None
                               or args.exclude_alerted or args.exclude_labelled):
        sys.stderr.write("detector: error: --from and --to need --topic (so do "
                         "--last-hours, --exclude-alerted and --exclude-labelled)\n")
        return EXIT_USAGE
    if args.last_hours is not None and (ranged or args.last_hours <= 0):
        sys.stderr.write("detector: error: --last-hours takes a positive number and "
                         "replaces --from/--to\n")
        return EXIT_USAGE
    if args.reference_size < 0 or args.key_reference_size < 0:
        sys.stderr.write("detector: error: --reference-size and --key-reference-size "
                         "cannot be negative\n")
        return EXIT_USAGE
    if args.artifact is not None and not args.publish:
        sys.stderr.write("detector: error: --artifact is for --publish of an existing "
                         "artifact\n")
        return EXIT_USAGE
    return calibrate.command(settings, calibrate.CalibrateOptions(
        normal=args.normal, topic=args.topic, artifact=args.artifact,
        time_from=args.time_from, time_to=args.time_to, last_hours=args.last_hours,
        exclude_alerted=args.exclude_alerted,
        exclude_labelled=args.exclude_labelled, anomalies=args.anomalies,
        label_field=args.label_field, target_fpr=target_fpr, select=args.select,
        target_precision=args.target_precision, holdout=args.holdout, seed=args.seed,
        bootstrap=args.bootstrap, reference_size=args.reference_size,
        key_reference_size=args.key_reference_size, out=args.out, report_dir=args.report_dir,
        cache_dir=args.cache_dir, publish=args.publish))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.settings is False:  # completion: needs no configuration
        completed: int = args.func(args)
        return completed
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log.level, settings.log.format)
        code: int = args.func(args, settings)
    except FatalEmbeddingError as exc:
        sys.stderr.write(f"detector: fatal embedding error: {exc}\n")
        return EXIT_FATAL_EMBEDDING
    except DetectorError as exc:
        sys.stderr.write(f"detector: error: {exc}\n")
        return EXIT_USAGE
    except KafkaError as exc:
        sys.stderr.write(f"detector: Kafka error: {type(exc).__name__}: {exc}\n")
        return EXIT_KAFKA
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
