"""Benchmark plumbing: the broker, topics, input data, a detector process, passthrough."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.broker import LocalKafka
from devtools.fakeapi import FakeEmbeddingServer
from devtools.sample_data import stream
from tests.helpers import unique
from tests.procs import DetectorProcess


class Broker:
    """The local broker (or $KAFKA_BOOTSTRAP_SERVERS when set)."""

    def __init__(self, work_dir: Path) -> None:
        import os

        self.external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        self.kafka = None if self.external else LocalKafka(work_dir=work_dir / "kafka")
        self.work_dir = work_dir

    @property
    def bootstrap(self) -> str:
        if self.external:
            return self.external
        assert self.kafka is not None
        return self.kafka.bootstrap_servers

    def __enter__(self) -> Broker:
        if self.kafka is not None:
            self.kafka.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.kafka is not None:
            self.kafka.stop()


async def make_topic(broker: Broker, partitions: int) -> str:
    name = unique("bench")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def produce_comments(broker: Broker, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=20)
    await producer.start()
    try:
        comments = stream(n, anomaly_rate=0.05, seed=17)
        for i, c in enumerate(comments):
            await producer.send(topic, value=orjson.dumps({"id": i, "text": c.text}),
                                key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def produce_repeating(broker: Broker, topic: str, n: int, fraction: float, pool: int,
                            *, seed: int = 23) -> None:
    """Comments where `fraction` of them repeat a text from a pool of `pool` texts (spam
    campaigns, copy-paste), the rest fresh."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=20)
    await producer.start()
    try:
        texts = [c.text for c in stream(n + pool, anomaly_rate=0.05, seed=seed)]
        repeats, fresh = texts[:pool], texts[pool:]
        rng = random.Random(seed)
        for i in range(n):
            text = rng.choice(repeats) if rng.random() < fraction else fresh[i]
            await producer.send(topic, value=orjson.dumps({"id": i, "text": text}),
                                key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def passthrough(broker: Broker, topic: str, n: int) -> float:
    """Raw aiokafka passthrough msg/s (see `passthrough_detail`)."""
    return (await passthrough_detail(broker, topic, n))["msg_s"]


async def passthrough_detail(broker: Broker, topic: str, n: int) -> dict[str, float]:
    """Raw aiokafka: consume, produce each record to another topic (acks=all, idempotent),
    commit; msg/s from the first record to the last acknowledged, and this process's CPU
    seconds per 1,000 records over the same span."""
    out = await make_topic(broker, 3)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                group_id=unique("raw"), enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=500)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await consumer.start()
    await producer.start()
    done = 0
    started = cpu = 0.0
    try:
        while done < n:
            fetched = await consumer.getmany(timeout_ms=500)
            futures = []
            for records in fetched.values():
                for r in records:
                    if not started:
                        started, cpu = time.monotonic(), time.process_time()
                    futures.append(await producer.send(out, value=r.value, key=r.key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
                done += len(futures)
        return {"msg_s": n / (time.monotonic() - started),
                "cpu_s_per_1000": 1000 * (time.process_time() - cpu) / n}
    finally:
        await consumer.stop()
        await producer.stop()


def embedding_section(api: FakeEmbeddingServer, concurrency: int, linger_ms: int = 50,
                      **extra: Any) -> dict[str, Any]:
    return {"backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
            "base_url": api.base_url, "api_key": "sk-bench", "concurrency": concurrency,
            "linger_ms": linger_ms, **{k: v for k, v in extra.items() if v is not None}}


class DetectorRun:
    """A `detector run` process over a pre-filled topic; `measure` gives msg/s."""

    def __init__(self, broker: Broker, topic: str, embedding: dict[str, Any], *,
                 scores: bool = False, threshold: float | None = None,
                 delivery: str = "at_least_once", group: str | None = None,
                 replica: str = "r0", scoring: dict[str, Any] | None = None) -> None:
        self.alerts_topic = unique("alerts")
        sections: dict[str, Any] = {
            "delivery": delivery,
            "kafka": {"bootstrap_servers": broker.bootstrap, "group_id": group or unique("det"),
                      "max_poll_records": 1000, "transactional_id": unique("txn"),
                      "commit_interval_ms": 200 if delivery == "exactly_once" else 1000},
            "input": {"topic": topic},
            "embedding": embedding,
            "alerts": {"topic": self.alerts_topic, "dead_letter_topic": unique("dlq"),
                       "scores_topic": unique("scores") if scores else None},
            "state": {"enabled": False, "replica_id": replica},
            "log": {"level": "warning"},
        }
        if threshold is not None or scoring:
            sections["scoring"] = (scoring or {}) | (
                {"threshold": threshold} if threshold is not None else {})
        self.proc = DetectorProcess(sections, broker.work_dir / f"{unique('det')}.log")

    async def __aenter__(self) -> DetectorRun:
        self.proc.start()
        await asyncio.to_thread(self.proc.wait_ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        code = await asyncio.to_thread(self.proc.terminate)
        if code != 0:
            print(f"detector exited {code}:\n{self.proc.tail()}", file=sys.stderr)

    async def measure(self, n: int) -> float:
        """msg/s between the first and the n-th scored record (start-up excluded)."""
        async with self:
            return await scored_rate([self], n)

    async def measure_detail(self, n: int, metrics: tuple[str, ...] = ()) -> dict[str, float]:
        """msg/s as `measure`, the detector's CPU seconds per 1,000 records over the same
        span, and the final value of each metric named in `metrics`."""
        async with self:
            assert self.proc.proc is not None
            pid = self.proc.proc.pid
            first_t = first_n = cpu = 0.0
            while True:
                scored = await asyncio.to_thread(self.proc.metric,
                                                 "detector_records_scored_total")
                now = time.monotonic()
                if scored > 0 and not first_t:
                    first_t, first_n, cpu = now, scored, cpu_seconds(pid)
                if scored >= n:
                    break
                await asyncio.sleep(0.02)
            out = {"msg_s": (n - first_n) / max(1e-9, now - first_t),
                   "cpu_s_per_1000": 1000 * (cpu_seconds(pid) - cpu) / max(1.0, n - first_n)}
            for name in metrics:
                out[name] = await asyncio.to_thread(self.proc.metric, name)
            return out


async def scored_rate(runs: list[DetectorRun], n: int) -> float:
    """msg/s of the runs together, from their first scored record to the n-th."""
    first_t = first_n = 0.0
    while True:
        scored = sum(await asyncio.gather(*(asyncio.to_thread(
            r.proc.metric, "detector_records_scored_total") for r in runs)))
        now = time.monotonic()
        if scored > 0 and not first_t:
            first_t, first_n = now, scored
        if scored >= n:
            return (n - first_n) / max(1e-9, now - first_t)
        await asyncio.sleep(0.02)


async def replay_rate(broker: Broker, topic: str, n: int) -> float:
    """`detector replay --dry-run` of the whole topic with the local model; msg/s from its
    own summary (start-up excluded by the summary's timer)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
               "DETECTOR_STATE__ENABLED": "false"}
        import os

        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "detector.cli", "replay", "--topic", topic, "--dry-run",
             "--quiet", "--progress-file", str(Path(tmp) / "p.json")],
            env={**os.environ, **env}, capture_output=True, text=True, check=True)
    line = [x for x in result.stderr.splitlines() if x.startswith("replay summary")][-1]
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    records = int(fields["records"])
    assert records == n, line
    return records / float(fields["seconds"])


async def measure_group(broker: Broker, topic: str, replicas: int, embedding: dict[str, Any],
                        n: int) -> float:
    """msg/s of `replicas` detector processes in one group; the records are produced once
    every replica holds partitions, so the measurement excludes start-up rebalances."""
    group = unique("scale")
    runs = [DetectorRun(broker, topic, embedding, group=group, replica=f"r{i}")
            for i in range(replicas)]
    for run in runs:
        run.proc.start()
    try:
        for run in runs:
            await asyncio.to_thread(run.proc.wait_ready)
        await produce_comments(broker, topic, n)
        return await scored_rate(runs, n)
    finally:
        for run in runs:
            await asyncio.to_thread(run.proc.terminate)
