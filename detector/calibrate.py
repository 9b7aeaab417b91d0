"""`detector calibrate`: embed normal (and labelled anomalous) comments, choose the
threshold on held-out normals, and write the artifact `detector run` loads plus a report.

Inputs come from JSONL files or from a topic's time range read without any consumer
group. Embeddings are cached on disk (SQLite, keyed by model, dimension and the text's
SHA-256), so a re-run with the same texts makes no embedding calls.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka.structs import TopicPartition

from detector import calibration as cal
from detector import records as rec
from detector.config import Settings
from detector.embedders import Embedder, build_embedder
from detector.embedders.base import Matrix
from detector.errors import CalibrationError
from detector.exits import EXIT_OK, EXIT_USAGE
from detector.kafka import reader_consumer
from detector.progress import Progress
from detector.ranges import parse_time, resolve_plan
from detector.samples import read_samples


class EmbeddingCache:
    """Vectors by (model, dimension, sha256(text)) in one SQLite file."""

    def __init__(self, path: Path, model: str, dimension: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB)")
        self.prefix = f"{model}|{dimension}|"
        self.dimension = dimension

    def key(self, text: str) -> str:
        return self.prefix + hashlib.sha256(text.encode()).hexdigest()

    def get(self, texts: Sequence[str]) -> dict[str, Matrix]:
        keys = {self.key(t): t for t in texts}
        found: dict[str, Matrix] = {}
        items = list(keys)
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            rows = self.db.execute(
                f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk).fetchall()
            for key, blob in rows:
                found[keys[key]] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, texts: Sequence[str], vectors: Matrix) -> None:
        self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                            [(self.key(t), v.astype(np.float32).tobytes())
                             for t, v in zip(texts, vectors, strict=True)])
        self.db.commit()

    def close(self) -> None:
        self.db.close()


async def embed_all(texts: list[str], embedder: Embedder, cache: EmbeddingCache,
                    batch_size: int, label: str) -> tuple[Matrix, int]:
    """Vectors for all texts, from the cache where possible; returns (matrix, calls made)."""
    cached = cache.get(texts)
    missing = list(dict.fromkeys(t for t in texts if t not in cached))
    calls = 0
    with Progress(len(missing), f"embedding {label}", unit="texts") as progress:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            vectors = await embedder.embed(chunk)
            calls += 1
            cache.put(chunk, vectors)
            cached.update(zip(chunk, vectors, strict=True))
            progress.update(start + len(chunk))
    matrix = np.stack([cached[t] for t in texts]) if texts else np.empty((0, cache.dimension))
    return matrix.astype(np.float32), calls


async def read_topic_texts(settings: Settings, topic: str, time_from: int | None,
                           time_to: int | None) -> tuple[list[str], int]:
    """Texts of a topic's time range, read with manual assignment and no group; also the
    number of records skipped as unusable (what the daemon would dead-letter)."""
    plan = await resolve_plan(settings, topic, time_from=time_from, time_to=time_to)
    consumer = reader_consumer(settings.kafka)
    await consumer.start()
    texts: list[str] = []
    skipped = 0
    try:
        for partition, (start, end) in plan.ranges.items():
            if start >= end:
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            # the consumer's position, not the last record's offset + 1, so that
            # transaction markers and compacted gaps before `end` cannot stall the loop
            while await consumer.position(tp) < end:
                fetched = await consumer.getmany(tp, timeout_ms=1000)
                for record in fetched.get(tp, []):
                    if record.offset >= end:
                        break
                    decoded = rec.decode(record, settings.input)
                    if isinstance(decoded, rec.Comment):
                        texts.append(decoded.text)
                    else:
                        skipped += 1
    finally:
        await consumer.stop()
    return texts, skipped


async def run_calibration(settings: Settings, args: argparse.Namespace,
                          embedder: Embedder | None = None) -> tuple[cal.Result, int]:
    """Gather inputs, embed (cached), calibrate, write artifact and report."""
    if args.normal is not None:
        samples, skipped = read_samples(args.normal, settings.input, args.label_field)
        normal = [s.text for s in samples if not s.label]
        anomalies = [s.text for s in samples if s.label]
        if skipped:
            sys.stderr.write(f"skipped {skipped} unusable lines of {args.normal}\n")
    else:
        normal, skipped = await read_topic_texts(
            settings, args.topic, parse_time(args.time_from) if args.time_from else None,
            parse_time(args.time_to) if args.time_to else None)
        anomalies = []
        if skipped:
            sys.stderr.write(f"skipped {skipped} unusable records of {args.topic}\n")
    if args.anomalies is not None:
        more, _ = read_samples(args.anomalies, settings.input)
        anomalies += [s.text for s in more]
    if not normal:
        msg = "no normal comments to calibrate on (the input is empty or unusable)"
        raise CalibrationError(msg)
    owned = embedder is None
    embedder = embedder or build_embedder(settings)
    cache = EmbeddingCache(args.cache_dir / "embeddings.sqlite", embedder.name,
                           embedder.dimension)
    try:
        size = settings.embedding.batch_size
        normal_vecs, calls = await embed_all(normal, embedder, cache, size, "normal")
        anomaly_vecs, more_calls = await embed_all(anomalies, embedder, cache, size,
                                                   "anomalies")
    finally:
        cache.close()
        if owned:
            await embedder.aclose()
    train, hold = cal.split(len(normal), args.holdout, args.seed)
    result = cal.calibrate(
        normal_vecs[train], normal_vecs[hold], anomaly_vecs if len(anomalies) else None,
        model=embedder.name, dimension=embedder.dimension, method=args.select,
        target_fpr=args.target_fpr, target_precision=args.target_precision,
        bootstrap=args.bootstrap, seed=args.seed)
    cal.save_artifact(result.artifact, args.out)
    if args.report_dir is not None:
        from detector.report import write_report

        write_report(result, args.report_dir)
    return result, calls + more_calls


def summary_table(result: cal.Result, out: Path, calls: int) -> str:
    a = result.artifact
    m = a.metrics
    rows: list[tuple[str, Any]] = [
        ("model", f"{a.model['name']} ({a.model['dimension']} dims)"),
        ("samples", f"train {a.counts['train']}, held-out {a.counts['holdout']}, "
                    f"anomalies {a.counts['anomalies']}"),
        ("method", f"{a.method} (target {a.target:.4g})"),
        ("threshold", f"{a.threshold:.4f}  (95% CI {m['threshold_ci95'][0]:.4f} .. "
                      f"{m['threshold_ci95'][1]:.4f} at the target FPR)"),
        ("held-out FPR", f"{m['holdout_fpr']:.2%}"),
    ]
    if "roc_auc" in m:
        rows += [("ROC AUC", f"{m['roc_auc']:.3f}"), ("PR AUC", f"{m['pr_auc']:.3f}"),
                 ("best F1", f"{m['best_f1']['f1']:.3f} at {m['best_f1']['threshold']:.4f}")]
    rows += [("embedding calls", calls), ("artifact", out)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n"


def add_parser(subparsers: Any) -> None:
    """Register `detector calibrate`."""
    p = subparsers.add_parser(
        "calibrate", help="choose the threshold on your own data and write an artifact",
        description="Build the centroid on a training split of normal comments and choose "
                    "the threshold on held-out normals (and labelled anomalies if given).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--normal", type=Path, help="JSONL file of normal comments")
    src.add_argument("--topic", help="read normal comments from this topic (no group)")
    p.add_argument("--from", dest="time_from", help="with --topic: start time")
    p.add_argument("--to", dest="time_to", help="with --topic: end time (exclusive)")
    p.add_argument("--anomalies", type=Path, help="JSONL file of labelled anomalies")
    p.add_argument("--label-field", help="field marking anomalies (truthy) in --normal")
    p.add_argument("--target-fpr", type=float, default=0.01,
                   help="false-positive rate on held-out normals (default 0.01)")
    p.add_argument("--select", choices=["target_fpr", "best_f1", "target_precision"],
                   default="target_fpr", help="how to choose the threshold")
    p.add_argument("--target-precision", type=float, default=0.9)
    p.add_argument("--holdout", type=float, default=0.3,
                   help="share of normals held out to choose the threshold (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the CI")
    p.add_argument("--out", type=Path, default=Path("calibration.json"))
    p.add_argument("--report-dir", type=Path, default=None,
                   help="write report.md, report.json and PNG plots here")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/embeddings"))
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 < args.target_fpr < 1 or not 0 < args.holdout < 1:
        sys.stderr.write("detector: error: --target-fpr and --holdout must be in (0, 1)\n")
        return EXIT_USAGE
    if args.topic is None and (args.time_from or args.time_to):
        sys.stderr.write("detector: error: --from and --to need --topic\n")
        return EXIT_USAGE
    # errors (DetectorError and its fatal embedding case, Kafka) are reported by the CLI
    result, calls = asyncio.run(run_calibration(settings, args))
    sys.stdout.write(summary_table(result, args.out, calls))
    return EXIT_OK


def load_lines(path: Path) -> list[dict[str, Any]]:
    """JSONL helper for tests and the quality bench."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
