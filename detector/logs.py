"""structlog configuration: a console renderer on a terminal, JSON lines otherwise.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Literal

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class StderrLogger:
    """A structlog logger that prints each rendered line to the current sys.stderr."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def msg(self, message: str) -> None:
        # stderr closed or gone: drop the line, never the pipeline
        with contextlib.suppress(ValueError, OSError):
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger(*args: Any) -> StderrLogger:
    return StderrLogger(str(args[0]) if args else "")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A logging handler bound to the current sys.stderr on every record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        """The stream is always the current sys.stderr."""


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog and the standard library's root handler once, at the edge."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer()
    )
    common: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[structlog.typing.Processor] = (
        [] if console else [structlog.processors.dict_tracebacks])
    final.append(renderer)
    structlog.configure(
        processors=[*common, *final],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    handler = StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=common,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # aiokafka logs through the standard library; keep its noise at warning level.
    root.setLevel(logging.WARNING)
