"""The one SIGTERM/SIGINT handler of the daemon and the replay command.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import structlog

from detector.exits import by_signal

log = structlog.get_logger("detector.signals")


def install_stop_handlers(stop: asyncio.Event, *, announce: Callable[[int], None] | None = None,
                          exit_now: Callable[[int], object] = os._exit) -> None:
    """First SIGTERM/SIGINT sets `stop` (after calling `announce`); the second exits."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting without draining", signal=signum)
            exit_now(by_signal(signum))
            return
        if announce is not None:
            announce(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

