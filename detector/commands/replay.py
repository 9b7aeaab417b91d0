"""`detector replay`: re-score a bounded range of a topic with the live pipeline code.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from detector import __version__
from detector.config import Settings
from detector.embedders import Embedder, build_embedder
from detector.errors import ConfigError
from detector.exits import EXIT_INTERRUPTED, EXIT_OK
from detector.io import records as rec
from detector.io.kafka import ensure_topics, make_producer, reader_consumer
from detector.io.ranges import Plan, resolve_plan
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.centroid import Centroid
from detector.model.reservoir import decode_exemplars, encode_exemplars
from detector.model.scorer import Scorer
from detector.operating import startup
from detector.operating.startup import InitialState
from detector.progress import Progress
from detector.signals import install_stop_handlers
from detector.state.store import SharedCentroid, StateStore
from detector.stream.bounds import Bounds
from detector.stream.delivery import Outbox, Sink
from detector.stream.embedding import BatchEmbedder
from detector.stream.pipeline import Pipeline

log = structlog.get_logger("detector.commands.replay")

REPLAY_ALERTS = "replay.alerts"  # internal names when output goes to files
REPLAY_SCORES = "replay.scores"
REPLAY_DEAD = "replay.dead-letters"


@dataclass
class ReplayOptions:
    """Parsed command-line options of a replay."""

    topic: str
    time_from: int | None = None  # epoch ms
    time_to: int | None = None
    starts: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    partitions: list[int] | None = None
    alerts_topic: str | None = None
    output: Path | None = None
    scores_file: Path | None = None
    dry_run: bool = False
    state: str = "frozen"  # frozen | evolving
    snapshot: str | None = None
    force: bool = False
    progress_file: Path | None = None
    resume: bool = False
    show_progress: bool = True
    artifact: Path | None = None  # score with this calibration artifact, not the configured one

    async def plan(self, settings: Settings) -> Plan:
        """The offset ranges these options name (times, offsets, partitions) on the topic."""
        return await resolve_plan(settings, self.topic, time_from=self.time_from,
                                  time_to=self.time_to, starts=self.starts, ends=self.ends,
                                  partitions=self.partitions)


@dataclass
class Summary:
    records: int = 0
    scored: int = 0
    flagged: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class FileSink:
    """A `Sink` that writes alerts (and scores) as JSON lines; acknowledges at once."""

    def __init__(self, alerts: IO[bytes] | None, scores: IO[bytes] | None) -> None:
        self.files = {REPLAY_ALERTS: alerts, REPLAY_SCORES: scores}

    async def send(self, topic: str, value: bytes, key: bytes | None = None
                   ) -> asyncio.Future[Any]:
        out = self.files.get(topic)
        if out is not None:
            out.write(value + b"\n")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class ProgressCommitter:
    """A `Committer` that records offsets in the plan and the progress file."""

    def __init__(self, plan: Plan, baselines: Baselines, path: Path | None, evolving: bool,
                 flush: IO[bytes] | None = None) -> None:
        self.plan = plan
        self.baselines = baselines
        self.centroid = baselines.global_.centroid
        self.path = path
        self.evolving = evolving
        self.flush = flush

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.plan.next[tp.partition] = offset
        if self.flush is not None:
            self.flush.flush()
        self.plan.centroid = self.centroid.to_dict() if self.evolving else None
        self.plan.exemplars = encode_exemplars(
            self.baselines.global_.reservoir.exemplars(), keep_text=True, exact=True
        ) if self.evolving else None
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(self.plan.to_json(), option=orjson.OPT_INDENT_2))
            tmp.replace(self.path)


async def replay(settings: Settings, opts: ReplayOptions, *, stop: asyncio.Event | None = None,
                 embedder: Embedder | None = None, out: IO[bytes] | None = None) -> Summary:
    """Replay the planned range; returns what was done (also when interrupted)."""
    stop = stop or asyncio.Event()
    if opts.artifact is not None:
        settings = settings.model_copy(update={"scoring": settings.scoring.model_copy(
            update={"calibration_file": opts.artifact})})
    if opts.alerts_topic and opts.alerts_topic == settings.alerts.topic and not opts.force:
        msg = (f"refusing to write replay alerts to the live alerts topic "
               f"{opts.alerts_topic!r}; choose another topic or pass --force")
        raise ConfigError(msg)
    if opts.resume:
        if opts.progress_file is None or not opts.progress_file.is_file():
            msg = "--resume needs an existing --progress-file"
            raise ConfigError(msg)
        plan = Plan.from_json(orjson.loads(opts.progress_file.read_bytes()))
    else:
        plan = await opts.plan(settings)
    owned = embedder is None
    embedder = embedder or build_embedder(settings)
    try:
        return await _run_plan(settings, opts, plan, embedder=embedder, stop=stop, out=out)
    finally:
        if owned:
            await embedder.aclose()


async def _run_plan(settings: Settings, opts: ReplayOptions, plan: Plan, *, embedder: Embedder,
                    stop: asyncio.Event, out: IO[bytes] | None,
                    base: InitialState | None = None) -> Summary:
    """Replay `plan` from `base` (default: the configured artifact or seed)."""
    base = base or await startup.initial_state(settings, embedder)
    centroid = base.centroid
    if opts.snapshot:
        records = await StateStore(settings.model_copy(update={"name": opts.snapshot})).load()
        shared = SharedCentroid.around(centroid, "replay", base.origin, embedder.name)
        if not records or len(shared.restore(records)) == len(records):
            msg = (f"no shared state of detector {opts.snapshot!r} for this model and base "
                   f"in {settings.state.topic!r}")
            raise ConfigError(msg)
    if opts.resume and plan.centroid is not None:
        centroid = Centroid.from_dict(plan.centroid)
    evolving = opts.state == "evolving"
    to_topic = opts.alerts_topic is not None
    alerts_name = opts.alerts_topic or REPLAY_ALERTS
    replay_settings = settings.model_copy(update={
        "alerts": settings.alerts.model_copy(update={
            "topic": alerts_name, "dead_letter_topic": REPLAY_DEAD,
            "scores_topic": REPLAY_SCORES if opts.scores_file else None}),
        "scoring": settings.scoring.model_copy(update={"update": evolving}),
        "embedding": settings.embedding.model_copy(update={"linger_ms": 3_600_000}),
    })
    baselines = startup.build(replay_settings.scoring, centroid, base.threshold,
                              artifact=base.artifact, seed=base.seed, replica="replay",
                              calibration=base.version)
    if opts.resume and plan.exemplars is not None:
        baselines.global_.reservoir.merge(decode_exemplars(plan.exemplars, centroid.dimension))
    metrics = Metrics()
    summary = Summary()
    async with contextlib.AsyncExitStack() as stack:
        alerts_out = None if (to_topic or opts.dry_run) else (
            stack.enter_context(opts.output.open("ab" if opts.resume else "wb"))
            if opts.output else (out or sys.stdout.buffer))
        scores_out = stack.enter_context(opts.scores_file.open("ab" if opts.resume else "wb")
                                         ) if opts.scores_file else None
        sink: Sink = FileSink(alerts_out, scores_out)
        if to_topic:
            if settings.kafka.create_topics:
                await ensure_topics(settings.kafka, {alerts_name: {}})
            producer = make_producer(settings.kafka)
            await producer.start()
            stack.push_async_callback(producer.stop)
            sink = _TopicOrFile(producer, alerts_name, FileSink(None, scores_out))
        committer = ProgressCommitter(plan, baselines, opts.progress_file, evolving,
                                      alerts_out)
        context = rec.Context(settings.name, __version__, embedder.name, embedder.dimension)
        reporter = asyncio.create_task(_report(plan, opts.show_progress))
        started = time.monotonic()
        try:
            for partition, (_, end) in sorted(plan.ranges.items()):
                if stop.is_set() or plan.position(partition) >= end:
                    continue
                await _replay_partition(
                    replay_settings, plan, partition, sink=sink, committer=committer,
                    embedder=embedder, metrics=metrics, context=context, stop=stop,
                    quiet=opts.dry_run, baselines=baselines)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        summary.seconds = time.monotonic() - started
    summary.records = int(_sample(metrics, "detector_records_consumed_total"))
    summary.scored = int(_sample(metrics, "detector_records_scored_total"))
    summary.flagged = int(_sample(metrics, "detector_alerts_total"))
    summary.dead_lettered = sum(int(s.value) for m in metrics.dead_letters.collect()
                                for s in m.samples if s.name.endswith("_total"))
    summary.interrupted = plan.remaining() > 0
    return summary


async def _replay_partition(settings: Settings, plan: Plan, partition: int, *, sink: Sink,
                            committer: ProgressCommitter, embedder: Embedder, metrics: Metrics,
                            context: rec.Context, stop: asyncio.Event, quiet: bool,
                            baselines: Baselines) -> None:
    tp = TopicPartition(plan.topic, partition)
    consumer = reader_consumer(settings.kafka, isolation_level="read_committed",
                               max_poll_records=settings.kafka.max_poll_records)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, plan.position(partition))
        outbox = Outbox(sink, committer, metrics, alerts_topic=settings.alerts.topic,
                        assigned=consumer.assignment)
        pipeline = Pipeline(settings, consumer=consumer,
                            embedding=BatchEmbedder.from_settings(embedder, settings.embedding,
                                                                  metrics),
                            scorer=Scorer.from_settings(settings, context, baselines=baselines),
                            outbox=outbox, metrics=metrics,
                            bounds=Bounds({tp: plan.ranges[partition][1]},
                                          starts={tp: plan.position(partition)}),
                            quiet_alerts=quiet)
        await pipeline.run(stop)
    finally:
        await consumer.stop()


class _TopicOrFile:
    """Alerts to a Kafka topic; scores to a file; dead letters counted only."""

    def __init__(self, producer: AIOKafkaProducer, alerts_topic: str, files: FileSink) -> None:
        self.producer = producer
        self.alerts_topic = alerts_topic
        self.files = files

    async def send(self, topic: str, value: bytes, key: bytes | None = None
                   ) -> asyncio.Future[Any]:
        if topic == self.alerts_topic:
            future: asyncio.Future[Any] = await self.producer.send(topic, value=value, key=key)
            return future
        return await self.files.send(topic, value, key)


async def _report(plan: Plan, enabled: bool) -> None:
    """Records done of the plan, with rate, ETA and per-partition counts, until cancelled."""
    if not enabled:
        return
    total = plan.total()
    with Progress(total, "replay", unit="records", initial=total - plan.remaining(),
                  every_s=2.0) as progress:
        while True:
            await asyncio.sleep(0.5)
            parts = " ".join(f"p{p}:{plan.position(p) - s}/{e - s}"
                             for p, (s, e) in sorted(plan.ranges.items()))
            progress.update(total - plan.remaining(), parts)


def _sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def command(settings: Settings, opts: ReplayOptions) -> int:
    """`detector replay`: replay until done or a signal, then the summary on stderr; the
    exit code (interrupted: progress saved, resume with --resume)."""
    async def main() -> Summary:
        stop = asyncio.Event()
        install_stop_handlers(stop, announce=_announce_stop)
        return await replay(settings, opts, stop=stop)

    summary = asyncio.run(main())
    sys.stderr.write(
        f"replay summary: records={summary.records} scored={summary.scored} "
        f"flagged={summary.flagged} dead_lettered={summary.dead_lettered} "
        f"seconds={summary.seconds:.1f} throughput={summary.rate():,.0f}/s\n")
    if summary.interrupted:
        sys.stderr.write(f"replay stopped before the end; progress saved in "
                         f"{opts.progress_file}. Resume with the same options plus --resume.\n")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _announce_stop(_signum: int) -> None:
    sys.stderr.write("stopping: finishing in-flight batches and saving progress...\n")
