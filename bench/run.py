"""The fast benchmark set (`make bench`): ratios measured in one run on one machine.

1. pipeline overhead: raw aiokafka consume->produce passthrough vs `detector run` with a
   zero-latency embedding API, same records, same broker, with the CPU seconds per 1,000
   records of each (target >= 0.5x);
2. remote API bound: 100 ms per batch, concurrency 1/4/8/16, vs the ceiling 10*N/L
   (targets >= 0.95x at N=8, >= 0.9x at N=16);
3. local model: raw batches of 10 in a tight loop vs the detector end to end (>= 0.85x);
4. latency: p50/p99 from produce to alert acknowledgement at 50% of the measured
   maximum rate, 100 ms API (target p99 <= linger + 2L);
5. replay vs live throughput on the same data and embedder;
6. replicas on 6 partitions;
7. tail latency at N=8: fixed 100 ms, lognormal (median 100 ms, sigma 0.5 and 1), 2 %
   stragglers at 2 s, vs 10*N / mean latency, with the default reorder window and with
   the window equal to N (the rule before it); target >= 0.9x with the default (~4 min);
8. HTTP transports in the same run: httpx vs aiohttp, zero-latency msg/s and detector CPU
   per 1,000 records, and L = 100 ms at N = 16 (~1 min);
9. embedding cache: 15 % of comments repeat texts from a pool of 200, L = 100 ms, N = 8,
   cache on vs off: throughput, embedding calls, texts sent, tokens saved (~40 s);
10. quota: requests/min (then tokens/min) set, and the fake API enforcing the same quota
   per second: fraction of the quota held, 429s seen, records lost (target >= 0.95,
   none lost) (~1 min).

Each part starts what it needs (local broker, fake API, detector processes), prints a
table, and everything is written to bench/results.json. `--parts 7,8` runs a subset
(part 4 without part 2 assumes 0.9 x the N=8 ceiling as the maximum rate).
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
    passthrough_detail,
    produce_comments,
    produce_repeating,
    replay_rate,
)
from detector.embedders.local import LocalEmbedder
from devtools.fakeapi import FakeEmbeddingServer, Latency, Quota
from devtools.sample_data import stream

RESULTS = Path("bench/results.json")
ALL_PARTS = "1,2,3,4,5,6,7,8,9,10,11"


async def bench_overhead(broker: Broker, n: int, api: FakeEmbeddingServer) -> dict[str, Any]:
    topic = await make_topic(broker, 3)
    await produce_comments(broker, topic, n)
    raw = await passthrough_detail(broker, topic, n)
    api.latency = Latency()
    det = await DetectorRun(broker, topic, embedding_section(api, concurrency=8),
                            scores=True).measure_detail(n)
    return {"records": n, "passthrough_msg_s": raw["msg_s"], "detector_msg_s": det["msg_s"],
            "ratio": det["msg_s"] / raw["msg_s"], "target": 0.5,
            "passthrough_cpu_s_per_1000": raw["cpu_s_per_1000"],
            "detector_cpu_s_per_1000": det["cpu_s_per_1000"]}


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
                     "ratio": rate / ceiling, "target": {8: 0.95, 16: 0.9}.get(n)})
    return rows


TAIL_SHAPES = {
    "fixed 100 ms": Latency(0.1),
    "lognormal median 100 ms, sigma 0.5": Latency(0.1, sigma=0.5),
    "lognormal median 100 ms, sigma 1": Latency(0.1, sigma=1.0),
    "2 % stragglers at 2 s": Latency(0.1, straggler_fraction=0.02, straggler_s=2.0),
}


async def bench_tail(broker: Broker, api: FakeEmbeddingServer, seconds: float
                     ) -> list[dict[str, Any]]:
    """N = 8 against latency shapes, default reorder window vs a window of N batches."""
    n = 8
    rows = []
    for shape, latency in TAIL_SHAPES.items():
        api.latency = latency
        ceiling = 10 * n / latency.mean_s()
        records = int(ceiling * seconds)
        for window in (None, n):
            topic = await make_topic(broker, 3)
            await produce_comments(broker, topic, records)
            rate = await DetectorRun(broker, topic, embedding_section(
                api, concurrency=n, reorder_window=window)).measure(records)
            rows.append({"latency": shape, "reorder_window": window or 16 * n,
                         "mean_latency_ms": latency.mean_s() * 1000, "records": records,
                         "ceiling_msg_s": ceiling, "detector_msg_s": rate,
                         "ratio": rate / ceiling, "target": 0.9 if window is None else None})
    api.latency = Latency()
    return rows


async def bench_transports(broker: Broker, api: FakeEmbeddingServer, n: int
                           ) -> list[dict[str, Any]]:
    """httpx vs aiohttp in the same run: zero latency (CPU bound) and L = 100 ms, N = 16."""
    rows: list[dict[str, Any]] = []
    for transport in ("httpx", "aiohttp"):
        api.latency = Latency()
        topic = await make_topic(broker, 3)
        await produce_comments(broker, topic, n)
        zero = await DetectorRun(broker, topic, embedding_section(
            api, concurrency=8, http_transport=transport), scores=True).measure_detail(n)
        api.latency = Latency(0.1)
        records = 1600 * 6
        topic = await make_topic(broker, 3)
        await produce_comments(broker, topic, records)
        remote = await DetectorRun(broker, topic, embedding_section(
            api, concurrency=16, http_transport=transport)).measure(records)
        rows.append({"transport": transport, "zero_latency_msg_s": zero["msg_s"],
                     "detector_cpu_s_per_1000": zero["cpu_s_per_1000"],
                     "n16_l100_msg_s": remote, "n16_ratio": remote / 1600})
    api.latency = Latency()
    for row in rows:
        row["zero_latency_vs_httpx"] = row["zero_latency_msg_s"] / rows[0]["zero_latency_msg_s"]
    return rows


async def bench_cache(broker: Broker, api: FakeEmbeddingServer, records: int
                      ) -> list[dict[str, Any]]:
    """15 % of comments repeat a pool of 200 texts; L = 100 ms, N = 8; cache on and off."""
    api.latency = Latency(0.1)
    rows = []
    for entries in (0, 12_000):
        topic = await make_topic(broker, 3)
        await produce_repeating(broker, topic, records, fraction=0.15, pool=200)
        calls, texts, tokens = api.stats.ok, api.stats.texts, api.stats.tokens
        det = await DetectorRun(broker, topic, embedding_section(
            api, concurrency=8, cache_entries=entries)).measure_detail(
            records, ("detector_embedding_tokens_saved_total",
                      "detector_embedding_cache_hits_total"))
        rows.append({"cache_entries": entries, "records": records, "msg_s": det["msg_s"],
                     "embedding_calls": api.stats.ok - calls,
                     "texts_sent": api.stats.texts - texts,
                     "tokens_billed": api.stats.tokens - tokens,
                     "cache_hits": det["detector_embedding_cache_hits_total"],
                     "tokens_saved": det["detector_embedding_tokens_saved_total"]})
    api.latency = Latency()
    off = rows[0]
    for row in rows:
        row["throughput_vs_off"] = row["msg_s"] / off["msg_s"]
        row["calls_vs_off"] = row["embedding_calls"] / off["embedding_calls"]
    return rows


async def bench_quota(broker: Broker, api: FakeEmbeddingServer, seconds: float
                      ) -> list[dict[str, Any]]:
    """The detector's requests_per_minute (then tokens_per_minute) equal to the quota the
    fake API enforces per second (20 ms per call): the share of the quota held between
    the first and the last scored record, 429s answered, and records lost."""
    texts = [c.text for c in stream(5000, anomaly_rate=0.05, seed=17)]
    tokens_per_msg = sum(max(1, len(t) // 3) for t in texts) / len(texts)  # as billed
    rows = []
    for bound, rpm, tpm in (("requests", 600, None), ("tokens", None, 36_000)):
        api.latency = Latency(0.02)
        api.quota = Quota(rpm / 60 if rpm else None, tpm / 60 if tpm else None)
        msg_s_at_quota = 10 * rpm / 60 if rpm else (tpm or 0) / 60 / tokens_per_msg
        records = int(seconds * msg_s_at_quota)
        topic = await make_topic(broker, 3)
        await produce_comments(broker, topic, records)
        calls, sent, throttled = api.stats.ok, api.stats.texts, api.stats.throttled
        det = await DetectorRun(broker, topic, embedding_section(
            api, concurrency=8, requests_per_minute=rpm, tokens_per_minute=tpm,
            cache_entries=0)).measure_detail(records, (
                "detector_records_scored_total",
                'detector_embedding_requests_total{outcome="throttled"}'))
        texts_per_call = (api.stats.texts - sent) / max(1, api.stats.ok - calls)
        held = (det["msg_s"] / texts_per_call / (rpm / 60) if rpm
                else det["msg_s"] * tokens_per_msg / ((tpm or 1) / 60))
        rows.append({"bound": bound, "quota_per_s": (rpm or tpm or 0) / 60,
                     "records": records, "msg_s": det["msg_s"],
                     "texts_per_call": texts_per_call, "held_fraction": held,
                     "throttled_429": api.stats.throttled - throttled,
                     "detector_throttled": det[
                         'detector_embedding_requests_total{outcome="throttled"}'],
                     "lost": records - det["detector_records_scored_total"],
                     "target": 0.95})
    api.quota = Quota()
    api.latency = Latency()
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
    parts = {int(p) for p in args.parts.split(",")}
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker, \
            FakeEmbeddingServer(api_key="sk-bench") as api:
        if 1 in parts:
            results["overhead"] = await bench_overhead(broker, args.records, api)
            print(table("1. pipeline overhead", [results["overhead"]]), flush=True)
        if 2 in parts:
            results["remote"] = await bench_remote(broker, api, 0.1, [1, 4, 8, 16])
            print(table("2. remote API bound (L = 100 ms)", results["remote"]), flush=True)
        if 3 in parts:
            results["local"] = await bench_local(broker, args.records // 2)
            print(table("3. local model", [results["local"]]), flush=True)
        if 4 in parts:
            max_rate = max((r["detector_msg_s"] for r in results.get("remote", [])
                            if r["concurrency"] == 8), default=0.9 * 800)
            results["latency"] = [
                await bench_latency(broker, api, max_rate, args.latency_seconds, delivery)
                for delivery in ("at_least_once", "exactly_once")]
            print(table("4. latency at 50% of max rate (L = 100 ms, N = 8)",
                        results["latency"]), flush=True)
        if 5 in parts:
            results["replay"] = await bench_replay(broker, args.records // 2)
            print(table("5. replay vs live (local model)", [results["replay"]]), flush=True)
        if 6 in parts:
            results["scale"] = await bench_scale(broker, api, args.records // 2)
            print(table("6. replicas on 6 partitions (L = 100 ms, N = 4 each)",
                        results["scale"]), flush=True)
        if 7 in parts:
            results["tail"] = await bench_tail(broker, api, args.tail_seconds)
            print(table("7. tail latency, N = 8, vs 10 N / mean latency", results["tail"]),
                  flush=True)
        if 8 in parts:
            results["transports"] = await bench_transports(broker, api, args.records // 2)
            print(table("8. HTTP transports", results["transports"]), flush=True)
        if 9 in parts:
            results["cache"] = await bench_cache(broker, api, args.cache_records)
            print(table("9. embedding cache, 15 % repeats from a pool of 200 (L = 100 ms, "
                        "N = 8)", results["cache"]), flush=True)
        if 10 in parts:
            results["quota"] = await bench_quota(broker, api, args.quota_seconds)
            print(table("10. quota held (fake API enforcing it per second)",
                        results["quota"]), flush=True)
        if 11 in parts:
            from bench.knn_cost import bench_knn_cost

            results["knn_cost"] = await bench_knn_cost(broker, api, args.records // 2)
            print(table("11. kNN and explanation cost: detector msg/s",
                        results["knn_cost"]["throughput"]), flush=True)
            print(table("11. reservoir memory", results["knn_cost"]["memory"]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=ALL_PARTS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--tail-seconds", type=float, default=8.0,
                        help="part 7: records for about this long at each ceiling")
    parser.add_argument("--cache-records", type=int, default=6_000)
    parser.add_argument("--quota-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    if args.out.exists() and args.parts != ALL_PARTS:
        results = {**json.loads(args.out.read_text()), **results}  # a subset: its parts only
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\nresults written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
