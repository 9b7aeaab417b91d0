"""The fast benchmark set (`make bench`): ratios measured in one run on one machine.

1. pipeline overhead: raw aiokafka consume->produce passthrough vs `detector run` with a
   zero-latency embedding API, same records, same broker (target >= 0.9x);
2. remote API bound: 100 ms per batch, concurrency 1/4/8/16, vs the ceiling 10*N/L
   (target >= 0.9x at N=8);
3. local model: raw batches of 10 in a tight loop vs the detector end to end (>= 0.85x);
4. latency: p50/p99 from produce to alert acknowledgement at 50% of the measured
   maximum rate, 100 ms API (target p99 <= linger + 2L);
5. replay vs live throughput on the same data and embedder.

Each part starts what it needs (local broker, fake API, detector processes), prints a
table, and everything is written to bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import (
    Broker,
    DetectorRun,
    embedding_section,
    make_topic,
    measure_group,
    passthrough,
    produce_comments,
    replay_rate,
)
from detector.dev.fakeapi import FakeEmbeddingServer
from detector.dev.sample_data import stream
from detector.embedders.local import LocalEmbedder

RESULTS = Path("bench/results.json")


async def bench_overhead(broker: Broker, n: int, api: FakeEmbeddingServer) -> dict[str, Any]:
    topic = await make_topic(broker, 3)
    await produce_comments(broker, topic, n)
    raw = await passthrough(broker, topic, n)
    api.latency_s = 0.0
    det = await DetectorRun(broker, topic, embedding_section(api, concurrency=8),
                            scores=True).measure(n)
    return {"records": n, "passthrough_msg_s": raw, "detector_msg_s": det,
            "ratio": det / raw, "target": 0.9}


async def bench_remote(broker: Broker, api: FakeEmbeddingServer, latency_s: float,
                       concurrencies: list[int]) -> list[dict[str, Any]]:
    rows = []
    api.latency_s = latency_s
    for n in concurrencies:
        ceiling = 10 * n / latency_s
        records = int(min(ceiling, 2000) * 6)  # about six seconds at the ceiling
        topic = await make_topic(broker, 3)
        await produce_comments(broker, topic, records)
        rate = await DetectorRun(broker, topic, embedding_section(api, concurrency=n,
                                                                    linger_ms=50)
                                 ).measure(records)
        rows.append({"concurrency": n, "latency_ms": latency_s * 1000, "records": records,
                     "ceiling_msg_s": ceiling, "detector_msg_s": rate,
                     "ratio": rate / ceiling, "target": 0.9 if n == 8 else None})
    return rows


def raw_local_rate(n: int) -> float:
    model = LocalEmbedder()
    texts = [c.text for c in stream(n, seed=3)]
    model.embed_sync(texts[:10])
    started = time.perf_counter()
    for i in range(0, n, 10):
        model.embed_sync(texts[i:i + 10])
    return n / (time.perf_counter() - started)


async def bench_local(broker: Broker, n: int) -> dict[str, Any]:
    raw = await asyncio.to_thread(raw_local_rate, n)
    topic = await make_topic(broker, 3)
    await produce_comments(broker, topic, n)
    det = await DetectorRun(broker, topic, {"backend": "local"}).measure(n)
    return {"records": n, "raw_model_texts_s": raw, "detector_msg_s": det,
            "ratio": det / raw, "target": 0.85}


async def bench_latency(broker: Broker, api: FakeEmbeddingServer, max_rate: float,
                        seconds: float, delivery: str) -> dict[str, Any]:
    api.latency_s = 0.1
    rate = max_rate / 2
    topic = await make_topic(broker, 3)
    run = DetectorRun(broker, topic, embedding_section(api, concurrency=8, linger_ms=50),
                      threshold=1.0, delivery=delivery)  # every comment alerts
    async with run:
        acked, visible = await produce_at_rate_and_measure(broker, topic, run.alerts_topic,
                                                           rate, seconds)
    p50, p99 = (float(x) for x in np.percentile(acked, [50, 99]) * 1000)
    v50, v99 = (float(x) for x in np.percentile(visible, [50, 99]) * 1000)
    budget = 50 + 2 * 100
    return {"delivery": delivery, "rate_msg_s": rate, "samples": len(acked), "p50_ms": p50,
            "p99_ms": p99, "visible_p50_ms": v50, "visible_p99_ms": v99,
            "budget_ms": budget, "ratio": budget / p99 if p99 else None}


async def produce_at_rate_and_measure(broker: Broker, topic: str, alerts_topic: str,
                                      rate: float, seconds: float
                                      ) -> tuple[list[float], list[float]]:
    """Per alert: its record timestamp (stamped when produced, acknowledged right after)
    minus the input's timestamp; and the time a read_committed consumer first sees it
    minus the input's timestamp (for exactly_once: when its transaction committed)."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(alerts_topic, bootstrap_servers=broker.bootstrap,
                                group_id=None, auto_offset_reset="latest",
                                isolation_level="read_committed", fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    await consumer.seek_to_end()
    texts = [c.text for c in stream(int(rate * seconds) + 10, seed=5)]
    expected = int(rate * seconds)
    latencies: list[float] = []
    visible: list[float] = []

    async def collect() -> None:
        """Read alerts while they are produced, so visibility is measured as it happens."""
        while len(latencies) < expected:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for r in records:
                    body = orjson.loads(r.value)
                    latencies.append((r.timestamp - body["source"]["timestamp"]) / 1000)
                    visible.append(time.time() - body["source"]["timestamp"] / 1000)

    collector = asyncio.create_task(collect())
    try:
        started = time.monotonic()
        for i, text in enumerate(texts[:expected]):
            await producer.send(topic, value=orjson.dumps({"text": text}))
            delay = started + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(collector), timeout=30)
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    finally:
        await producer.stop()
        await consumer.stop()
    return latencies, visible


async def bench_scale(broker: Broker, api: FakeEmbeddingServer, records: int
                      ) -> list[dict[str, Any]]:
    """1, 2, 3 replicas on 6 partitions, 100 ms API, concurrency 4 each."""
    api.latency_s = 0.1
    rows = []
    base = 0.0
    for replicas in (1, 2, 3):
        topic = await make_topic(broker, 6)
        rate = await measure_group(broker, topic, replicas, embedding_section(api, 4), records)
        base = base or rate
        rows.append({"replicas": replicas, "msg_s": rate, "per_replica": rate / replicas,
                     "vs_linear": rate / (base * replicas),
                     "ceiling_msg_s": replicas * 10 * 4 / 0.1})
    return rows


async def bench_replay(broker: Broker, n: int) -> dict[str, Any]:
    topic = await make_topic(broker, 3)
    await produce_comments(broker, topic, n)
    live = await DetectorRun(broker, topic, {"backend": "local"}).measure(n)
    replay = await replay_rate(broker, topic, n)
    return {"records": n, "live_msg_s": live, "replay_msg_s": replay, "ratio": replay / live,
            "target": 1.0}


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(title: str, rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    out = [f"\n## {title}", " | ".join(keys), " | ".join("---" for _ in keys)]
    for row in rows:
        out.append(" | ".join(f"{v:,.2f}" if isinstance(v, float) else str(v)
                              for v in row.values()))
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker, \
            FakeEmbeddingServer(api_key="sk-bench") as api:
        results["overhead"] = await bench_overhead(broker, args.records, api)
        print(table("1. pipeline overhead", [results["overhead"]]), flush=True)
        results["remote"] = await bench_remote(broker, api, 0.1, [1, 4, 8, 16])
        print(table("2. remote API bound (L = 100 ms)", results["remote"]), flush=True)
        results["local"] = await bench_local(broker, args.records // 2)
        print(table("3. local model", [results["local"]]), flush=True)
        max_rate = max(r["detector_msg_s"] for r in results["remote"] if r["concurrency"] == 8)
        results["latency"] = [
            await bench_latency(broker, api, max_rate, args.latency_seconds, delivery)
            for delivery in ("at_least_once", "exactly_once")]
        print(table("4. latency at 50% of max rate (L = 100 ms, N = 8)",
                    results["latency"]), flush=True)
        results["replay"] = await bench_replay(broker, args.records // 2)
        print(table("5. replay vs live (local model)", [results["replay"]]), flush=True)
        results["scale"] = await bench_scale(broker, api, args.records // 2)
        print(table("6. replicas on 6 partitions (L = 100 ms, N = 4 each)", results["scale"]),
              flush=True)
    return results


async def knn_cost_part(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """bench/knn_cost.py on its own broker and fake API."""
    from bench.knn_cost import bench_knn_cost, smoke

    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker, \
            FakeEmbeddingServer(api_key="sk-bench") as api:
        if args.part == "knn-cost-smoke":
            return await smoke(broker, api)
        return await bench_knn_cost(broker, api, args.records // 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--part", choices=["all", "knn-cost", "knn-cost-smoke"],
                        default="all", help="run one part only (results not merged)")
    args = parser.parse_args(argv)
    if args.part != "all":
        cost = asyncio.run(knn_cost_part(args))
        print(table("kNN and explanation cost: detector msg/s", cost["throughput"]))
        print(table("reservoir memory", cost["memory"]))
        return 0
    results = asyncio.run(main_async(args))
    RESULTS.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\nresults written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
