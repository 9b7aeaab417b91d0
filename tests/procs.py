"""Real `detector run` processes for fault and scaling tests: start, wait ready, kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devtools.broker import free_port


def flatten_env(sections: dict[str, Any], prefix: str = "DETECTOR_") -> dict[str, str]:
    """{"kafka": {"group_id": "g"}} -> {"DETECTOR_KAFKA__GROUP_ID": "g"}."""
    env: dict[str, str] = {}
    for key, value in sections.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            env.update(flatten_env(value, name + "__"))
        elif value is None:
            env[name] = "null"
        else:
            env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class DetectorProcess:
    """One `python -m detector.cli run` child with its own metrics port and log file."""

    def __init__(self, sections: dict[str, Any], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, **flatten_env(sections),
                    "DETECTOR_SERVER__ENABLED": "true", "DETECTOR_SERVER__PORT": str(self.port),
                    "DETECTOR_SERVER__HOST": "127.0.0.1", "DETECTOR_LOG__FORMAT": "json"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DetectorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detector.cli", "--config", "config/detector.yaml", "run"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as resp:
                return int(resp.status), str(resp.read().decode())
        except urllib.error.HTTPError as exc:
            return int(exc.code), ""

    def metric(self, name: str) -> float:
        try:
            _, body = self.get("/metrics")
        except OSError:
            return -1.0
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, deadline_s: float = 90) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                msg = f"detector exited with {self.proc.returncode}: {self.tail()}"
                raise AssertionError(msg)
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        msg = f"detector not ready after {deadline_s}s: {self.tail()}"
        raise AssertionError(msg)

    def kill(self) -> None:
        """kill -9: no drain, no commit, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
