"""`make demo`: a local broker, the detector with the local model, and a sample stream.

Starts a single-node Kafka broker from cached Maven jars, creates the topics, starts
`detector run` as a child process (seeded from config/normal_comments.jsonl), produces
a stream of ordinary English and Chinese product comments with planted garbled, spam
and off-topic ones plus a few malformed records, prints each alert as it arrives with
why it fired (the nearest normal exemplar, resolved to its text, and the baseline that
judged it), and stops everything cleanly once every record has been consumed.

Alerts name their nearest exemplars by reference only (topic, partition, offset;
`scoring.keep_exemplar_text` is off by default). `Resolver` turns a reference into text:
the demo's own produced comments by the partition and offset the broker acknowledged,
seed-file exemplars (``seed:FILE``, partition -1) by their line in the seed file, and
anything else by reading that record from the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition

from detector.calibration.samples import read_texts
from detector.config import KafkaSettings, Settings
from detector.io.kafka import ensure_topics
from devtools.broker import LocalKafka, free_port
from devtools.sample_data import stream

TOPICS = {"input": "comments", "alerts": "comment-alerts", "dlq": "comment-dead-letters"}
MALFORMED: list[bytes] = [b"this is not json", b"\xff\xfe broken utf-8",
                          b'{"body": "no text field"}', b'{"text": "   "}']
Source = tuple[str, int, int]  # topic, partition, offset


class Resolver:
    """Texts of exemplar references: produced by the demo, from the seed file, or read
    back from the topic (then remembered)."""

    def __init__(self, bootstrap: str, settings: Settings | None = None) -> None:
        self.bootstrap = bootstrap
        self.texts: dict[Source, str] = {}
        settings = settings or Settings()
        seed = settings.scoring.seed_file
        if seed is not None and seed.is_file():  # as detector.commands.run names seed rows
            for i, text in enumerate(read_texts(seed, settings.input)):
                self.texts[(f"seed:{seed.name}", -1, i)] = text
        self.text_field = settings.input.text_field

    def produced(self, topic: str, partition: int, offset: int, text: str) -> None:
        self.texts[(topic, partition, offset)] = text

    async def text(self, source: dict[str, object]) -> str | None:
        """The text at `source` (an alert's `nearest[].source`), None if unreadable."""
        key = (str(source["topic"]), int(str(source["partition"])),
               int(str(source["offset"])))
        if key not in self.texts and key[1] >= 0:
            read = await self._read(*key)
            if read is not None:
                self.texts[key] = read
        return self.texts.get(key)

    async def _read(self, topic: str, partition: int, offset: int) -> str | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            record = await asyncio.wait_for(consumer.getone(tp), 10)
            body = orjson.loads(record.value) if record.value is not None else None
        except (TimeoutError, orjson.JSONDecodeError):
            return None
        finally:
            await consumer.stop()
        text = body.get(self.text_field) if isinstance(body, dict) else None
        return text if isinstance(text, str) else None


async def explain(alert: dict[str, object], resolver: Resolver) -> list[str]:
    """The lines under an alert that say why it fired: the nearest normal exemplar (its
    text resolved) and the baseline with its threshold."""
    lines = []
    nearest = alert.get("nearest")
    if isinstance(nearest, list) and nearest:
        first = nearest[0]
        source = first["source"]
        where = f"{source['topic']}/{source['partition']}@{source['offset']}"
        text = first.get("text") or await resolver.text(source)
        shown = repr(str(text)[:70]) if text is not None else "(text not found)"
        lines.append(f"         nearest normal  similarity={first['similarity']:+.3f}  "
                     f"{shown}  [{where}]")
    else:
        lines.append("         nearest normal  (none: the baseline keeps no exemplars)")
    baseline = alert.get("baseline")
    if isinstance(baseline, dict):
        scope = "global" if baseline.get("scope") != "key" else f"key {baseline['key']!r}"
        lines.append(f"         baseline        {scope}, threshold "
                     f"{float(baseline['threshold']):+.3f} ({baseline['threshold_source']}), "
                     f"centroid similarity {float(str(alert['centroid_similarity'])):+.3f}")
    return lines



def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            msg = f"detector exited early with code {proc.returncode}; see its log"
            raise RuntimeError(msg)
        try:
            scrape(port, "/readyz")
            return
        except OSError:
            await asyncio.sleep(0.2)
    msg = "detector did not become ready in time"
    raise RuntimeError(msg)


async def print_alerts(bootstrap: str, seen: list[dict[str, object]], done: asyncio.Event,
                       resolver: Resolver) -> None:
    consumer = AIOKafkaConsumer(TOPICS["alerts"], TOPICS["dlq"], bootstrap_servers=bootstrap,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    body = orjson.loads(record.value)
                    seen.append(body)
                    if record.topic == TOPICS["alerts"]:
                        why = await explain(body, resolver)
                        print("\n".join([f"  ALERT  similarity={body['similarity']:+.3f}  "
                                          f"{str(body['text'])[:70]!r}", *why]), flush=True)
                    else:
                        print(f"  DEAD-LETTER  reason={body['reason']:<13} "
                              f"{str(body['error'])[:60]}", flush=True)
    finally:
        await consumer.stop()


def remember(resolver: Resolver, text: str, sent: asyncio.Future[RecordMetadata]) -> None:
    """Once the broker acknowledged a produced comment: its text by partition and offset."""
    if not sent.cancelled() and sent.exception() is None:
        metadata = sent.result()
        resolver.produced(metadata.topic, metadata.partition, metadata.offset, text)


async def produce_stream(bootstrap: str, count: int, rate: float, resolver: Resolver
                         ) -> tuple[int, list[str]]:
    comments = stream(count, anomaly_rate=0.06, seed=2026)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i, comment in enumerate(comments):
            value = orjson.dumps({"id": f"demo-{i}", "text": comment.text, "kind": comment.kind})
            sent = await producer.send(TOPICS["input"], value=value,
                                       key=f"user-{i % 37}".encode())
            sent.add_done_callback(functools.partial(remember, resolver, comment.text))
            if i % 50 == 25:
                await producer.send(TOPICS["input"], value=MALFORMED[(i // 50) % len(MALFORMED)],
                                    key=b"bad")
            await asyncio.sleep(1 / rate)
        await producer.flush()
    finally:
        await producer.stop()
    malformed = sum(1 for i in range(count) if i % 50 == 25)
    return count + malformed, [c.text for c in comments if c.anomalous]


async def demo(count: int, rate: float, workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    print("starting a local Kafka broker (first run downloads the broker jars with mvn)...",
          flush=True)
    with LocalKafka(work_dir=workdir / "kafka") as kafka:
        bootstrap = kafka.bootstrap_servers
        print(f"broker ready at {bootstrap}", flush=True)
        await ensure_topics(KafkaSettings(bootstrap_servers=bootstrap),
                            {TOPICS["input"]: {}}, partitions=3)
        port = free_port()
        env = {**os.environ, "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
               "DETECTOR_KAFKA__GROUP_ID": "detector-demo", "DETECTOR_SERVER__PORT": str(port),
               "DETECTOR_LOG__FORMAT": "json"}
        log_path = workdir / "detector.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "run"], env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT)
            try:
                await wait_ready(port, proc)
                print(f"detector ready (metrics on http://127.0.0.1:{port}/metrics, "
                      f"log in {log_path}); producing {count} comments at ~{rate:.0f}/s\n",
                      flush=True)
                seen: list[dict[str, object]] = []
                done = asyncio.Event()
                resolver = Resolver(bootstrap)
                printer = asyncio.create_task(print_alerts(bootstrap, seen, done, resolver))
                started = time.monotonic()
                produced, planted = await produce_stream(bootstrap, count, rate, resolver)
                end = time.monotonic() + 120
                metrics = ""
                while time.monotonic() < end:
                    metrics = scrape(port)
                    finished = metric_value(metrics, "detector_records_scored_total") \
                        + metric_value(metrics, "detector_dead_letters_total")
                    if finished >= produced:
                        break
                    await asyncio.sleep(0.2)
                elapsed = time.monotonic() - started
                await asyncio.sleep(1.0)  # let the printer catch the last alerts
                done.set()
                await printer
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=60)
        alerts = [b for b in seen if b.get("schema") == "detector.alert/v2"]
        letters = [b for b in seen if b.get("schema") == "detector.dead-letter/v1"]
        print("\n=== demo summary ===")
        print(f"records produced      {produced} ({count} comments, {produced - count} malformed)")
        caught = sum(1 for a in alerts if a["text"] in set(planted))
        print(f"planted anomalies     {len(planted)}")
        print(f"alerts                {len(alerts)} ({caught} planted garbled/spam/off-topic, "
              f"{len(alerts) - caught} ordinary comments)")
        print(f"dead letters          {len(letters)}")
        print(f"scored                {metric_value(metrics, 'detector_records_scored_total'):.0f}")
        print(f"wall time             {elapsed:.1f}s")
        print(f"detector exit code    {code} (SIGTERM: drained, committed, closed)")
        print("metrics excerpt:")
        for line in metrics.splitlines():
            if line.startswith(("detector_records", "detector_alerts_total",
                                "detector_dead_letters_total", "detector_centroid",
                                "detector_threshold")) and "_created" not in line:
                print("  " + line)
        return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=400, help="comments to produce")
    parser.add_argument("--rate", type=float, default=80.0, help="comments per second")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/demo"))
    args = parser.parse_args(argv)
    return asyncio.run(demo(args.count, args.rate, args.workdir))


if __name__ == "__main__":
    sys.exit(main())
