"""structlog configuration: a console renderer on a terminal, JSON lines otherwise.

Both structlog and the standard library (aiokafka logs through it) write to whatever
`sys.stderr` is at the moment of writing, not the object it was at configuration time:
a replaced or closed stream (a test harness's capture, a redirected daemon) must never
turn a log line into an exception inside the pipeline.
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

    def msg(self, message: str) -> None:
        # stderr closed or gone: drop the line, never the pipeline
        with contextlib.suppress(ValueError, OSError):
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger(*_args: Any) -> StderrLogger:
    return StderrLogger()


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
    """Configure structlog once, at the edge (the CLI)."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not console:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    # aiokafka logs through the standard library; keep its noise at warning level.
    logging.basicConfig(level=logging.WARNING, handlers=[StderrHandler()],
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
