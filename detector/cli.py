"""The `detector` command line: parse, load settings, call one library function per command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from detector import __version__
from detector.config import Settings, load_settings
from detector.errors import DetectorError, FatalEmbeddingError
from detector.logs import configure_logging

EXIT_USAGE = 2
EXIT_FATAL_EMBEDDING = 3
EXIT_KAFKA = 5


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

    for add_parser in _command_parsers():
        add_parser(sub)
    return parser


def _command_parsers() -> list[Callable[[Any], None]]:
    """Commands living in their own modules; each exposes `add_parser(subparsers)`."""
    from detector import calibrate, replay

    return [replay.add_parser, calibrate.add_parser]


def settings_from(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    from detector.app import run

    settings = settings_from(args)
    return asyncio.run(run(settings, handle_signals=True))


def _cmd_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    sys.stdout.write(orjson.dumps(
        settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
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
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
