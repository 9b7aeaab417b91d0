"""Micro-benchmarks of the embedding client alone (no Kafka), ratios from one run.

transport: one event loop, `--concurrency` callers each sending batches of 10 texts to
    the fake API (own process, zero latency) through `DashScopeEmbedder`, for
    `--seconds` per transport, alternating httpx and aiohttp `--rounds` times: calls/s
    and the client's CPU ms per call (process time of this process only).
encoding: the OpenAI-compatible answer for 10 dense unit vectors at `--dimension`, as
    float JSON and as base64: bytes, and the client's CPU to turn the body into
    normalised rows (orjson parse + decode + normalise), median of many repetitions.

    python -m bench.embed_micro --parts transport,encoding      # about 25 s
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import orjson
from pydantic import SecretStr

from detector.config import EmbeddingSettings
from detector.embedders.base import normalise_rows
from detector.embedders.remote import DashScopeEmbedder, OpenAIEmbedder
from devtools.sample_data import stream

KEY = "sk-micro"


class FakeApiProcess:
    """`python -m devtools.fakeapi` in a child process, so its CPU is not ours."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> FakeApiProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.fakeapi", "--api-key", KEY],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        self.base_url = line.removeprefix("URL=")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


async def calls_per_second(base_url: str, transport: str, concurrency: int, seconds: float
                           ) -> dict[str, float]:
    settings = EmbeddingSettings(backend="dashscope", model="text-embedding-v4", dimension=256,
                                 base_url=base_url, concurrency=concurrency,
                                 http_transport=transport)
    texts = [c.text for c in stream(10 * 64, seed=9)]
    calls = 0
    async with DashScopeEmbedder(settings, SecretStr(KEY)) as emb:
        await emb.embed(texts[:10])  # connect outside the measurement
        end = time.monotonic() + seconds

        async def worker(offset: int) -> None:
            nonlocal calls
            i = offset
            while time.monotonic() < end:
                start = (i % 64) * 10
                await emb.embed(texts[start:start + 10])
                calls += 1
                i += concurrency

        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {"calls_s": calls / wall, "client_cpu_ms_per_call": 1000 * cpu / max(1, calls)}


def bench_transport(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"httpx": [], "aiohttp": []}
    with FakeApiProcess() as api:
        for _ in range(args.rounds):
            for transport in args.transports.split(","):
                runs[transport].append(asyncio.run(calls_per_second(
                    api.base_url, transport, args.concurrency, args.seconds)))
    out: dict[str, Any] = {"concurrency": args.concurrency, "rounds": args.rounds}
    for transport, rows in runs.items():
        if not rows:
            continue
        out[f"{transport}_calls_s"] = statistics.median(r["calls_s"] for r in rows)
        out[f"{transport}_cpu_ms_per_call"] = statistics.median(
            r["client_cpu_ms_per_call"] for r in rows)
    if runs["httpx"] and runs["aiohttp"]:
        out["calls_ratio_aiohttp_vs_httpx"] = out["aiohttp_calls_s"] / out["httpx_calls_s"]
        out["cpu_ratio_aiohttp_vs_httpx"] = (out["aiohttp_cpu_ms_per_call"]
                                             / out["httpx_cpu_ms_per_call"])
    return out


def openai_body(vectors: np.ndarray, encoding: str) -> bytes:
    rows: list[Any] = (
        [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        if encoding == "base64" else list(vectors))
    return orjson.dumps({"object": "list", "model": "m", "data": [
        {"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
        "usage": {"prompt_tokens": 100, "total_tokens": 100}},
        option=orjson.OPT_SERIALIZE_NUMPY)


def bench_encoding(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(10, args.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = EmbeddingSettings(backend="openai", model="m", dimension=args.dimension)
    emb = OpenAIEmbedder(settings, SecretStr(KEY))
    out: dict[str, Any] = {"dimension": args.dimension, "texts_per_body": 10}
    decoded = {}
    for encoding in ("float", "base64"):
        body = openai_body(vectors, encoding)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            rows, _tokens = emb.rows(orjson.loads(body), 10)
            decoded[encoding] = normalise_rows(rows, args.dimension)
            times.append(time.perf_counter() - started)
        out[f"{encoding}_bytes"] = len(body)
        out[f"{encoding}_decode_us"] = 1e6 * statistics.median(times)
    np.testing.assert_array_equal(decoded["float"], decoded["base64"])
    out["bytes_ratio_base64_vs_float"] = out["base64_bytes"] / out["float_bytes"]
    out["cpu_ratio_base64_vs_float"] = out["base64_decode_us"] / out["float_decode_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="transport,encoding")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--transports", default="httpx,aiohttp", help="e.g. aiohttp to profile")
    parser.add_argument("--dimension", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {}
    if "encoding" in parts:
        results["encoding"] = bench_encoding(args)
        print(json.dumps(results["encoding"], indent=2), flush=True)
    if "transport" in parts:
        results["transport"] = bench_transport(args)
        print(json.dumps(results["transport"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
