"""Soak (not in the fast set): a detector at about half its maximum rate for a long time,
its RSS sampled every 10 s; the target is RSS flat within ±5 % after warm-up.

    python -m bench.soak --minutes 30 --rate 350

Runs the detector process against the local fake API (100 ms per batch, concurrency 8,
so the maximum is about 800 msg/s) with a scores topic, so every record is produced,
fetched, embedded over HTTP, scored and published for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from bench.common import Broker, DetectorRun, embedding_section, make_topic
from devtools.fakeapi import FakeEmbeddingServer
from devtools.sample_data import stream


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def soak(minutes: float, rate: float, warmup_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker, \
            FakeEmbeddingServer(api_key="sk-bench", latency_s=0.1) as api:
        topic = await make_topic(broker, 3)
        run = DetectorRun(broker, topic, embedding_section(api, concurrency=8), scores=True)
        texts = [c.text for c in stream(5000, anomaly_rate=0.05, seed=31)]
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        samples: list[tuple[float, int]] = []
        sent = 0
        async with run:
            assert run.proc.proc is not None
            pid = run.proc.proc.pid
            started = time.monotonic()
            next_sample = started
            end = started + minutes * 60
            while time.monotonic() < end:
                await producer.send(topic, orjson.dumps({"text": texts[sent % len(texts)]}))
                sent += 1
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - started, rss_kib(pid)))
                    next_sample += 10
                delay = started + sent / rate - now
                if delay > 0:
                    await asyncio.sleep(delay)
            scored = run.proc.metric("detector_records_scored_total")
        await producer.stop()
    after = [r for t, r in samples if t >= warmup_s]
    mean = sum(after) / len(after)
    return {"minutes": minutes, "rate_msg_s": rate, "sent": sent, "scored": scored,
            "warmup_s": warmup_s, "rss_samples_kib": samples,
            "rss_after_warmup_mean_kib": mean,
            "rss_after_warmup_min_pct": 100 * (min(after) / mean - 1),
            "rss_after_warmup_max_pct": 100 * (max(after) / mean - 1),
            "target_pct": 5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=350)
    parser.add_argument("--warmup", type=float, default=120, help="seconds ignored at start")
    args = parser.parse_args(argv)
    result = asyncio.run(soak(args.minutes, args.rate, args.warmup))
    Path("bench/soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples_kib"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
