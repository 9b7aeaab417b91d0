"""Calibration at scale: time and peak memory of `detector calibrate`'s statistics and
artifact at a day of traffic (default 500,000 held-out normals).

Three measurements, each in one process with tracemalloc (numpy reports its buffers to
it): (1) the statistics on similarity scores alone (threshold, 1,000-round bootstrap,
ROC/PR AUC, best F1, ROC curve); (2) `calibration.calibrate` on embedding vectors
(centroid and similarities computed in chunks), where the input matrix is the caller's
and is reported separately; (3) the report with its plots (matplotlib).

    python -m bench.calibration_scale [--n 500000] [--dimension 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detector.calibration.artifact import calibrate
from detector.calibration.report import write_report
from detector.calibration.stats import (
    best_f1,
    bootstrap_ci,
    pr_auc,
    roc_auc,
    roc_points,
    threshold_at_fpr,
)


def measure(label: str, work: Callable[[], Any]) -> Any:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = work()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"| {label} | {elapsed:.2f} s | {peak / 2**20:,.0f} MiB |")
    return result


def vectors(n: int, dimension: int, shift: float, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    rows = (np.ones((n, dimension), dtype=np.float32) * shift
            + rng.standard_normal((n, dimension), dtype=np.float32))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000, help="held-out normals")
    parser.add_argument("--dimension", type=int, default=512)
    args = parser.parse_args()
    n, anomalies = args.n, max(100, args.n // 100)
    rng = np.random.default_rng(0)
    normal = rng.normal(0.6, 0.1, n)
    anomalous = rng.normal(0.3, 0.1, anomalies)
    print(f"n = {n:,} held-out normals, {anomalies:,} anomalies, d = {args.dimension}")
    print("| step | time | peak traced memory |\n|---|---|---|")

    def statistics() -> None:
        threshold_at_fpr(normal, 0.01)
        bootstrap_ci(normal, 0.01, 1_000, seed=0)
        roc_auc(normal, anomalous)
        pr_auc(normal, anomalous)
        best_f1(normal, anomalous)
        roc_points(normal, anomalous)

    measure(f"statistics on {n:,} scores (scores: {normal.nbytes / 2**20:.0f} MiB)", statistics)
    train = vectors(n // 9, args.dimension, 0.2, 1)
    held = vectors(n, args.dimension, 0.2, 2)
    odd = vectors(anomalies, args.dimension, 0.0, 3)
    size = (held.nbytes + train.nbytes) / 2**20
    result = measure(
        f"calibrate() on {n:,} + {n // 9:,} vectors (input {size:,.0f} MiB, not counted)",
        lambda: calibrate(train, held, odd, model="bench", dimension=args.dimension,
                          target_fpr=0.01, bootstrap=1_000))
    with tempfile.TemporaryDirectory() as tmp:
        measure("report with histogram and ROC plots",
                lambda: write_report(result, Path(tmp)))


if __name__ == "__main__":
    main()
