"""`detector calibrate`: embed normal (and labelled anomalous) comments, choose the
threshold on held-out normals, and write the artifact `detector run` loads plus a report.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.calibration import keys as keycal
from detector.calibration import report
from detector.calibration.artifact import Result, calibrate, load_artifact, save_artifact
from detector.calibration.samples import read_samples
from detector.calibration.stats import Method, split
from detector.config import EmbeddingSettings, Settings
from detector.embedders import Embedder, build_embedder
from detector.embedders.base import Matrix
from detector.embedders.cache import cache_key, cache_namespace
from detector.errors import CalibrationError
from detector.exits import EXIT_OK
from detector.io import records as rec
from detector.io.ranges import read_plan, resolve_plan
from detector.model.reservoir import Ref, encode_exemplars
from detector.progress import Progress


@dataclass(frozen=True)
class CalibrateOptions:
    """What `detector calibrate` calibrates on and how (its flags, parsed)."""

    normal: Path | None = None  # JSONL file of normal comments, or
    topic: str | None = None  # a topic's range read without a group, or
    artifact: Path | None = None  # with `publish`: publish this artifact, calibrate nothing
    time_from: int | None = None  # epoch ms (with `topic`)
    time_to: int | None = None
    last_hours: float | None = None  # instead of time_from/time_to
    exclude_alerted: bool = False
    exclude_labelled: bool = False
    anomalies: Path | None = None
    label_field: str | None = None
    target_fpr: float = 0.01
    select: Method = "target_fpr"
    target_precision: float = 0.9
    holdout: float = 0.3
    seed: int = 0
    bootstrap: int = 1000
    reference_size: int = 2000  # held-out normals kept as the reference sample
    key_reference_size: int = 1000  # per key baseline
    out: Path = Path("calibration.json")
    report_dir: Path | None = None
    cache_dir: Path = Path(".cache/embeddings")
    publish: bool = False


class EmbeddingCache:
    """Vectors of the embedder `settings` describe, by `cache_key` (hex), in one SQLite
    file; `dimension` is the embedder's."""

    def __init__(self, path: Path, settings: EmbeddingSettings, dimension: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB)")
        self.namespace = cache_namespace(settings)
        self.dimension = dimension

    def key(self, text: str) -> str:
        return cache_key(self.namespace, text).hex()

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
                           time_to: int | None) -> tuple[list[rec.Comment], int]:
    """Comments of a topic's time range, read with manual assignment and no group (their
    key from scoring.key_field); also the number of records skipped as unusable (what the
    daemon would dead-letter)."""
    plan = await resolve_plan(settings, topic, time_from=time_from, time_to=time_to)
    texts: list[rec.Comment] = []
    skipped = 0
    async for record in read_plan(settings, plan):
        decoded = rec.decode(record, settings.input, settings.scoring.key_field)
        if isinstance(decoded, rec.Comment):
            texts.append(decoded)
        else:
            skipped += 1
    return texts, skipped


def calibrate_vectors(settings: Settings, opts: CalibrateOptions, normal_vecs: Matrix,
                      anomaly_vecs: Matrix | None, *, keys: list[str | None],
                      refs: list[Ref], embedder: Embedder) -> Result:
    """Split, fit the global baseline (centroid and reservoir) and, with a key field, the
    per-key baselines; choose the thresholds for the configured scoring method."""
    train, hold = split(len(normal_vecs), opts.holdout, opts.seed)
    scoring = settings.scoring
    key_field = scoring.key_field
    train_refs = [refs[i] for i in train]
    fitted = keycal.fit(normal_vecs[train], train_refs, scoring.reservoir_size)
    result = calibrate(
        normal_vecs[train], normal_vecs[hold], anomaly_vecs,
        model=embedder.name, dimension=embedder.dimension, method=opts.select,
        target_fpr=opts.target_fpr, target_precision=opts.target_precision,
        bootstrap=opts.bootstrap, seed=opts.seed,
        text_prefix=settings.embedding.text_prefix,
        score=lambda rows: fitted.scores(rows, scoring.method, scoring.k),
        scoring={"method": scoring.method, "k": scoring.k},
        confidence=scoring.threshold_confidence, reference_size=opts.reference_size)
    exemplars = encode_exemplars(fitted.reservoir.exemplars(),
                                 keep_text=scoring.keep_exemplar_text)
    keys_section = None
    if key_field is not None:
        per_key = keycal.calibrate_keys(
            normal_vecs[train], [keys[i] for i in train], train_refs, normal_vecs[hold],
            [keys[i] for i in hold], target_fpr=opts.target_fpr, method=scoring.method,
            k=scoring.k, reservoir_size=scoring.key_reservoir_size,
            min_train=scoring.key_min_samples,
            confidence=scoring.key_threshold_confidence,
            reference_size=opts.key_reference_size, seed=opts.seed)
        keys_section = per_key.to_json(key_field, scoring.key_min_samples,
                                       keep_text=scoring.keep_exemplar_text)
    return Result(result.artifact.with_baselines(exemplars, keys_section),
                  result.holdout_sims, result.anomaly_sims)


async def _topic_comments(settings: Settings, opts: CalibrateOptions, topic: str
                          ) -> tuple[list[rec.Comment], int]:
    """The comments of `topic` over the options' range, without the excluded ones."""
    time_from, time_to = opts.time_from, opts.time_to
    if opts.last_hours:
        time_to = int(time.time() * 1000)
        time_from = time_to - int(opts.last_hours * 3_600_000)
    comments, skipped = await read_topic_texts(settings, topic, time_from, time_to)
    if opts.exclude_alerted or opts.exclude_labelled:
        from detector.calibration.exclusions import exclusions

        left_out = await exclusions(settings, topic, time_from,
                                    alerted=opts.exclude_alerted,
                                    labelled=opts.exclude_labelled)
        kept = [c for c in comments if not left_out.excludes(c)]
        sys.stderr.write(f"left out {len(comments) - len(kept)} alerted or "
                         f"anomaly-labelled comments of {topic}\n")
        comments = kept
    return comments, skipped


async def run_calibration(settings: Settings, opts: CalibrateOptions,
                          embedder: Embedder | None = None) -> tuple[Result, int]:
    """Gather inputs, embed (cached), calibrate, write artifact and report."""
    key_field = settings.scoring.key_field
    if opts.normal is not None:
        samples, skipped = read_samples(opts.normal, settings.input, opts.label_field,
                                        key_field)
        normal = [s.text for s in samples if not s.label]
        keys = [s.key for s in samples if not s.label]
        refs = [Ref(f"file:{opts.normal.name}", -1, i, s.id) for i, s in enumerate(samples)
                if not s.label]
        anomalies = [s.text for s in samples if s.label]
        if skipped:
            sys.stderr.write(f"skipped {skipped} unusable lines of {opts.normal}\n")
    elif opts.topic is not None:
        comments, skipped = await _topic_comments(settings, opts, opts.topic)
        normal = [c.text for c in comments]
        keys = [c.key for c in comments]
        refs = [Ref(c.source.topic, c.source.partition, c.source.offset, c.id)
                for c in comments]
        anomalies = []
        if skipped:
            sys.stderr.write(f"skipped {skipped} unusable records of {opts.topic}\n")
    else:
        msg = "nothing to calibrate on: give a file of normal comments or a topic"
        raise CalibrationError(msg)
    if opts.anomalies is not None:
        more, _ = read_samples(opts.anomalies, settings.input)
        anomalies += [s.text for s in more]
    if not normal:
        msg = "no normal comments to calibrate on (the input is empty or unusable)"
        raise CalibrationError(msg)
    owned = embedder is None
    embedder = embedder or build_embedder(settings)
    cache = EmbeddingCache(opts.cache_dir / "embeddings.sqlite", settings.embedding,
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
    if settings.scoring.keep_exemplar_text:
        refs = [Ref(r.topic, r.partition, r.offset, r.id, text)
                for r, text in zip(refs, normal, strict=True)]
    result = calibrate_vectors(settings, opts, normal_vecs, anomaly_vecs if len(anomalies)
                               else None, keys=keys, refs=refs, embedder=embedder)
    save_artifact(result.artifact, opts.out)
    if opts.report_dir is not None:
        from detector.calibration.report import write_report

        write_report(result, opts.report_dir)
    return result, calls + more_calls


def summary_table(result: Result, out: Path, calls: int) -> str:
    a = result.artifact
    m = a.metrics
    rows: list[tuple[str, Any]] = [
        ("model", f"{a.model.name} ({a.model.dimension} dims)"
                  + (f", text prefix {a.model.text_prefix!r}" if a.model.text_prefix else "")),
        ("samples", f"train {a.counts.train}, held-out {a.counts.holdout}, "
                    f"anomalies {a.counts.anomalies}"),
        ("method", f"{a.method} (target {a.target:.4g})"),
        ("threshold", f"{a.threshold:.4f}  (95% CI {m.threshold_ci95[0]:.4f} .. "
                      f"{m.threshold_ci95[1]:.4f} at the target FPR)"),
        ("held-out FPR", f"{m.holdout_fpr:.2%}"),
    ]
    promised = report.global_promise(a)
    if promised is not None:
        rows.append(("expected FPR", promised))
    if m.roc_auc is not None and m.best_f1 is not None:
        rows += [("ROC AUC", f"{m.roc_auc:.3f}"), ("PR AUC", f"{m.pr_auc:.3f}"),
                 ("best F1", f"{m.best_f1.f1:.3f} at {m.best_f1.threshold:.4f}")]
    per_key = report.key_rows(a)
    if a.keys is not None:
        baselines = a.keys.baselines
        own = sum(b.threshold is not None for b in baselines.values())
        pooled = a.keys.pooled_threshold
        rows.append(("per-key baselines",
                     f"{len(baselines)} keys of {a.keys.field} ({own} with their own "
                     f"threshold; pooled key threshold "
                     f"{'none' if pooled is None else f'{pooled:.4f}'}"
                     + (f", expected FPR {report.fpr_range(a.keys.pooled_fpr)}"
                        if a.keys.pooled_fpr is not None else "") + ")"))
    rows += [("scoring", f"{a.scoring.method}, "
                         f"{len(a.exemplars)} exemplars"),
             ("reference", "none" if a.reference is None
              else f"{a.reference.count} held-out normals"),
             ("embedding calls", calls), ("artifact", out)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if per_key:
        lines += ["", *_key_lines(per_key[:SUMMARY_KEYS])]
        if len(per_key) > SUMMARY_KEYS:
            lines.append(f"... and {len(per_key) - SUMMARY_KEYS} more keys (all in the "
                         f"artifact and in --report-dir's report.md)")
    return "\n".join(lines) + "\n"


SUMMARY_KEYS = 50  # keys listed in the summary; the report lists all


def _key_lines(rows: list[report.KeyRow]) -> list[str]:
    """Per key: held-out count, own/pooled, threshold and expected FPR range, aligned."""
    cells = [("key", "held-out", "threshold from", "threshold", "expected FPR")]
    cells += [(r.key, str(r.holdout), r.origin,
               "-" if r.threshold is None else f"{r.threshold:.4f}", r.fpr) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(cell[:4], widths, strict=True))
            + "  " + cell[4] for cell in cells]


def command(settings: Settings, opts: CalibrateOptions) -> int:
    """`detector calibrate`: calibrate (unless publishing an existing artifact), print the
    summary table, and with `publish` put the artifact on the state topic."""
    # errors (DetectorError and its fatal embedding case, Kafka) are reported by the CLI
    out = opts.artifact
    if out is None:
        result, calls = asyncio.run(run_calibration(settings, opts))
        sys.stdout.write(summary_table(result, opts.out, calls))
        out = opts.out
    if opts.publish:
        version = asyncio.run(publish(settings, out))
        sys.stdout.write(f"published {out} as calibration {version} on "
                         f"{settings.state.topic!r} (detector {settings.name!r})\n")
    return EXIT_OK


async def publish(settings: Settings, path: Path) -> str:
    """Write the artifact at `path` to the state topic (detector.state.published); returns its
    version. A record larger than one Kafka message goes in parts (detector.state.chunks),
    and the parts of the artifact it replaces are deleted once its head is written."""
    from detector.io.kafka import make_producer
    from detector.state import chunks, published
    from detector.state.store import StateStore

    if not settings.state.enabled:
        msg = "state.enabled is false: there is no state topic to publish the artifact on"
        raise CalibrationError(msg)
    artifact = load_artifact(path)
    version = published.version_of(artifact)
    store = StateStore(settings)
    if settings.kafka.create_topics:
        await store.ensure_topic()
    await store.load()  # the artifact published now, whose parts this one replaces
    replaced = [] if store.calibration is None else chunks.part_keys_of(
        settings.name, store.calibration)
    pairs = chunks.split(settings.name, version, published.encode(settings.name, artifact))
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        parts = [await producer.send(settings.state.topic, key=key, value=value)
                 for key, value in pairs[:-1]]
        await asyncio.gather(*parts)  # every part is stored before the head names them
        key, value = pairs[-1]
        await producer.send_and_wait(settings.state.topic, key=key, value=value)
        keep = {key for key, _ in pairs}
        gone = [await producer.send(settings.state.topic, key=old, value=None)
                for old in replaced if old not in keep]
        await asyncio.gather(*gone)
    finally:
        await producer.stop()
    return version
