"""The one stop handler: the first signal asks for a graceful stop, the second exits."""

from __future__ import annotations

import asyncio
import os
import signal

from detector.exits import by_signal
from detector.signals import install_stop_handlers
from tests.helpers import wait_for


async def test_first_signal_stops_second_exits() -> None:
    stop = asyncio.Event()
    announced: list[int] = []
    exits: list[int] = []
    install_stop_handlers(stop, announce=announced.append, exit_now=exits.append)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        assert announced == [signal.SIGTERM]
        assert exits == []
        os.kill(os.getpid(), signal.SIGINT)
        await wait_for(lambda: exits, 5, "the second signal")
        assert exits == [by_signal(signal.SIGINT)] == [130]
        assert announced == [signal.SIGTERM]
    finally:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
