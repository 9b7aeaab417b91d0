"""Cost of kNN scoring and explanations (issue 13): `python -m bench.run --parts 11`.

Detector throughput with the zero-latency fake API and with the local model, for
`scoring.method: centroid` and `knn` with reservoirs of 2,000 and 10,000 exemplars,
explanations (3 nearest exemplars per alert) on and off. Each run starts from a
calibration artifact whose reservoir is already full, built here from normal sample
comments embedded by the same model (the fake API's vectors are computed in-process),
so every scored comment pays for a full reservoir. Also the memory a reservoir holds
per 1,000 exemplars (vectors, keys and references, measured with tracemalloc).
"""

from __future__ import annotations

import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Broker, DetectorRun, embedding_section, make_topic, produce_comments
from detector.calibration.artifact import calibrate, save_artifact
from detector.calibration.keys import fit
from detector.embedders.local import LocalEmbedder
from detector.model.reservoir import Ref, Reservoir, encode_exemplars
from devtools.fakeapi import FakeEmbeddingServer, fake_embedding
from devtools.sample_data import normal_comment

VARIANTS: list[tuple[str, int, int]] = [  # method, reservoir size, exemplars per alert
    ("centroid", 2_000, 0), ("centroid", 2_000, 3),
    ("knn", 2_000, 3), ("knn", 10_000, 0), ("knn", 10_000, 3)]


def normal_texts(n: int, seed: int = 11) -> list[str]:
    import random

    rng = random.Random(seed)
    return [normal_comment(rng) for _ in range(n)]


def artifact(vectors: np.ndarray, method: str, size: int, model: str, path: Path) -> Path:
    """A calibration artifact with a full reservoir of `size` exemplars."""
    train, hold = vectors[:size], vectors[size:]
    fitted = fit(train, [Ref("bench", -1, i) for i in range(len(train))], size)
    result = calibrate(train, hold, None, model=model, dimension=vectors.shape[1],
                       target_fpr=0.01, bootstrap=50,
                       score=lambda rows: fitted.scores(rows, method, 5),  # type: ignore[arg-type]
                       scoring={"method": method, "k": 5})
    full = result.artifact.with_baselines(encode_exemplars(fitted.reservoir.exemplars(),
                                                           keep_text=False))
    save_artifact(full, path)
    return path


def memory_per_1000(dimension: int, n: int = 10_000) -> float:
    """Bytes held per 1,000 exemplars by a full reservoir (tracemalloc)."""
    rows = np.random.default_rng(0).normal(size=(n, dimension)).astype(np.float32)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    reservoir = Reservoir(n, dimension)
    for i, row in enumerate(rows):
        reservoir.offer(row, Ref("comments", 0, i, f"id-{i}"))
    used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(reservoir) == n
    return used / (n / 1000)


async def bench_knn_cost(broker: Broker, api: FakeEmbeddingServer, n: int,
                         sizes: tuple[int, ...] = (2_000, 10_000)
                         ) -> dict[str, list[dict[str, Any]]]:
    """Throughput per variant (fake API and local model) and memory per 1,000 exemplars."""
    rows: list[dict[str, Any]] = []
    variants = [v for v in VARIANTS if v[1] in sizes]
    texts = normal_texts(max(sizes) + 400)
    api.latency_s = 0.0
    local = LocalEmbedder()
    def fake() -> np.ndarray:
        return np.stack([fake_embedding(t, 256) for t in texts])

    def model() -> np.ndarray:
        return np.concatenate([local.embed_sync(texts[i:i + 50])
                               for i in range(0, len(texts), 50)])

    backends: dict[str, tuple[dict[str, Any], str, Callable[[], np.ndarray]]] = {
        "fake API": (embedding_section(api, concurrency=8), "text-embedding-v4", fake),
        "local model": ({"backend": "local"}, local.name, model),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for backend, (embedding, name, embed) in backends.items():
            vectors = embed().astype(np.float64)
            for method, size, explain in variants:
                path = artifact(np.concatenate([vectors[:size], vectors[-400:]]), method, size,
                                name, Path(tmp) / f"{backend}-{method}-{size}.json")
                topic = await make_topic(broker, 3)
                await produce_comments(broker, topic, n)
                run = DetectorRun(broker, topic, embedding, scoring={
                    "calibration_file": str(path), "method": method, "reservoir_size": size,
                    "explain_exemplars": explain})
                rate = await run.measure(n)
                rows.append({"backend": backend, "method": method, "reservoir": size,
                             "explanations": explain, "msg_s": rate})
    memory = [{"dimension": d, "bytes_per_1000_exemplars": memory_per_1000(d)}
              for d in (256, 512)]
    return {"throughput": rows, "memory": memory}

