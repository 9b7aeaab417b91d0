"""The `detector` command line: parse, load settings once, call one command with them.

Commands live in their own modules (`detector.commands.run`, `detector.commands.calibrate`,
`detector.commands.replay`); each exposes ``add_parser(subparsers)`` and a command function
``(args, settings) -> exit code``. The CLI imports them, never the reverse. Errors
that reach here become one line on stderr and an exit code from `detector.exits`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import orjson
from aiokafka.errors import KafkaError

from detector import __version__
from detector.commands import calibrate, compare, replay
from detector.commands import run as app
from detector.config import Settings, load_settings
from detector.errors import DetectorError, FatalEmbeddingError
from detector.exits import EXIT_FATAL_EMBEDDING, EXIT_INTERRUPTED, EXIT_KAFKA, EXIT_USAGE
from detector.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detector",
        description="Streaming anomaly detector for text comments on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    parser.add_argument(
        "--config", "-c", default=None,
        help="YAML configuration file (default: $DETECTOR_CONFIG, else config/detector.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume, score and publish alerts until SIGTERM")
    run.set_defaults(func=_cmd_run)

    show = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    show.set_defaults(func=_cmd_config)

    replay.add_parser(sub, compare=compare.command)
    calibrate.add_parser(sub)
    return parser


def _cmd_run(_args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(app.run(settings, handle_signals=True))


def _cmd_config(_args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(orjson.dumps(
        settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
