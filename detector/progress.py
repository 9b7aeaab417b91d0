"""Progress of a long command (calibrate's embedding, replay) on stderr, with rate and ETA.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from tqdm import tqdm


class _Bar(tqdm):  # type: ignore[type-arg]
    """tqdm without its monitor thread: the bar is redrawn on updates only."""

    monitor_interval = 0


class Progress:
    """Reports `done` of `total` units; `update` takes the absolute count done so far."""

    def __init__(self, total: int, label: str, *, unit: str = "items", initial: int = 0,
                 every_s: float = 10.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.empty = total <= 0  # nothing to do: nothing to report
        self.total = max(1, total)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.clock = clock
        self.initial = initial
        self.done = initial
        self.started = clock()
        self.last_line: float | None = None
        self.written: int | None = None  # `done` of the last line written
        self.last_tenth = initial * 10 // self.total
        self.closed = False
        self.bar: _Bar | None = None
        if self.stream.isatty() and not self.empty:
            self.bar = _Bar(total=total, initial=initial, desc=label, unit=f" {unit}",
                            file=self.stream, leave=True, dynamic_ncols=True,
                            mininterval=0.2)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def update(self, done: int, detail: str = "") -> None:
        """`done` units are done (a count, not an increment); `detail` is shown after it."""
        self.done = done
        if self.empty:
            return
        if self.bar is not None:
            if detail:
                self.bar.set_postfix_str(detail, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        tenth = done * 10 // self.total
        now = self.clock()
        due = self.last_line is None or now - self.last_line >= self.every_s
        if tenth > self.last_tenth or due or done >= self.total:
            self.last_tenth = tenth
            self._line(now, detail)

    def close(self) -> None:
        """End the bar (or write the last line if the last update did not)."""
        if self.closed or self.empty:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.written != self.done:
            self._line(self.clock(), "")

    def line(self, detail: str = "") -> str:
        """The plain progress line at this moment."""
        elapsed = max(1e-9, self.clock() - self.started)
        rate = (self.done - self.initial) / elapsed
        left = max(0, self.total - self.done)
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        text = (f"{self.label}: {self.done}/{self.total} ({self.done / self.total:.0%}) "
                f"{rate:,.0f} {self.unit}/s, ETA {eta}")
        return f"{text}  [{detail}]" if detail else text

    def _line(self, now: float, detail: str) -> None:
        self.last_line = now
        self.written = self.done
        self.stream.write(self.line(detail) + "\n")
        self.stream.flush()
