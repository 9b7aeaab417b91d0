"""`detector run`: wire settings, embedder, Kafka clients, pipeline and HTTP server together.

Start-up order: embedder → base centroid (calibration artifact, else seed file) plus
the replicas' contributions from the state topic → output topics → producer →
consumer (subscribed with the rebalance listener) → state sync → health server →
pipeline. Shutdown runs it backwards after the pipeline has drained and committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from detector import __version__
from detector import records as rec
from detector.centroid import Centroid
from detector.config import Settings
from detector.delivery import Committer, Gate, GroupCommitter, Outbox, TransactionCommitter
from detector.embedders import Embedder, build_embedder
from detector.errors import ConfigError
from detector.exits import EXIT_FATAL_EMBEDDING, EXIT_OK, EXIT_TRANSACTION
from detector.kafka import (
    ensure_topics,
    make_consumer,
    make_producer,
    topic_partitions,
    wait_for_kafka,
)
from detector.metrics import Metrics
from detector.pipeline import Pipeline
from detector.samples import read_texts
from detector.scorer import Scorer
from detector.server import HealthServer
from detector.signals import install_stop_handlers
from detector.state import SharedCentroid, StateStore, StateSync

log = structlog.get_logger("detector.app")
_Client = TypeVar("_Client", AIOKafkaProducer, AIOKafkaConsumer)


@dataclass(frozen=True, slots=True)
class InitialState:
    """The centroid and threshold the detector starts with, and where they came from."""

    centroid: Centroid
    threshold: float
    origin: str


async def initial_state(settings: Settings, embedder: Embedder) -> InitialState:
    """Calibration artifact if configured, else the seed file embedded now."""
    scoring = settings.scoring
    if scoring.calibration_file is not None:
        from detector.calibration import check_compatible, load_artifact

        artifact = load_artifact(scoring.calibration_file)
        check_compatible(artifact, embedder.name, embedder.dimension)
        centroid = Centroid.from_dict(artifact.centroid)
        centroid.decay = scoring.decay
        return InitialState(centroid, artifact.threshold,
                            f"calibration:{_digest(scoring.calibration_file)}")
    if scoring.seed_file is None:
        msg = "set scoring.calibration_file or scoring.seed_file: the detector needs a centroid"
        raise ConfigError(msg)
    return InitialState(
        await seed_centroid(scoring.seed_file, settings, embedder), scoring.threshold,
        f"seed:{_digest(scoring.seed_file)}",
    )


def _digest(path: Path) -> str:
    """A short content hash: shared state is reused only while its base is unchanged."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg) from None


async def seed_centroid(path: Path, settings: Settings, embedder: Embedder) -> Centroid:
    """The mean of the embedded normal samples in `path`."""
    texts = read_texts(path, settings.input)
    if not texts:
        msg = f"seed file {path} holds no usable comments"
        raise ConfigError(msg)
    size = settings.embedding.batch_size
    centroid = Centroid.empty(embedder.dimension, settings.scoring.decay)
    for start in range(0, len(texts), size):
        for row in await embedder.embed(texts[start:start + size]):
            centroid.add(row)
    centroid.version = 0
    log.info("centroid seeded", file=str(path), samples=len(texts))
    return centroid


def replica_id(settings: Settings) -> str:
    """This instance's stable name: state.replica_id, else the pod name, else the host."""
    return (settings.state.replica_id or settings.kafka.group_instance_id
            or socket.gethostname())


def transactional_id(settings: Settings) -> str:
    """Stable per instance, so a restarted instance fences its predecessor's transactions."""
    if settings.kafka.transactional_id:
        return settings.kafka.transactional_id
    return f"{settings.name}-{replica_id(settings)}"


def output_topics(settings: Settings) -> dict[str, dict[str, str]]:
    topics: dict[str, dict[str, str]] = {
        settings.alerts.topic: {},
        settings.alerts.dead_letter_topic: {},
    }
    if settings.alerts.scores_topic:
        topics[settings.alerts.scores_topic] = {}
    return topics


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    embedder: Embedder | None = None,
    metrics: Metrics | None = None,
    handle_signals: bool = False,
) -> int:
    """Run the detector until `stop` is set (or SIGTERM/SIGINT with `handle_signals`)."""
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    async with contextlib.AsyncExitStack() as stack:
        if embedder is None:
            embedder = build_embedder(settings, metrics)
            stack.push_async_callback(embedder.aclose)
        if handle_signals:
            install_stop_handlers(stop, announce=_announce_stop)
        state, shared, store = await _starting_point(settings, embedder)
        pipeline = await _build_pipeline(stack, settings, embedder=embedder, state=state,
                                         shared=shared, store=store, metrics=metrics)
        pipeline.consumer.subscribe([settings.input.topic], listener=pipeline.listener())
        await _started(stack, pipeline.consumer)
        if settings.server.enabled:
            await _serve(stack, settings, pipeline, metrics)
        await pipeline.run(stop)
        log.info("detector stopped", fatal=pipeline.fatal is not None,
                 transaction_failed=pipeline.failure is not None)
        if pipeline.failure is not None:
            return EXIT_TRANSACTION
        return EXIT_FATAL_EMBEDDING if pipeline.fatal is not None else EXIT_OK
    return EXIT_OK  # pragma: no cover - the context manager does not swallow exceptions


async def _starting_point(settings: Settings, embedder: Embedder
                          ) -> tuple[InitialState, SharedCentroid, StateStore | None]:
    """The base, the output topics, and the shared centroid: base + every replica's
    published contribution."""
    await wait_for_kafka(settings.kafka, settings.kafka.connect_deadline_s)
    if not await topic_partitions(settings.kafka, settings.input.topic):
        msg = (f"input topic {settings.input.topic!r} does not exist on "
               f"{settings.kafka.bootstrap_servers}; create it or fix input.topic")
        raise ConfigError(msg)
    state = await initial_state(settings, embedder)
    if settings.kafka.create_topics:
        await ensure_topics(settings.kafka, output_topics(settings))
    shared = SharedCentroid(state.centroid, replica_id(settings), state.origin, embedder.name)
    store = StateStore(settings) if settings.state.enabled else None
    if store is not None:
        if settings.kafka.create_topics:
            await store.ensure_topic()
        records = await store.load()
        ignored = shared.restore(records)
        if ignored:
            log.warning("state of other bases or models ignored; starting from the base",
                        replicas=ignored)
    log.info("detector starting", version=__version__, origin=state.origin,
             threshold=state.threshold, model=embedder.name, dimension=embedder.dimension,
             replica=shared.replica, centroid_version=shared.centroid.version,
             centroid_weight=shared.centroid.weight, input=settings.input.topic,
             group=settings.kafka.group_id, delivery=settings.delivery)
    return state, shared, store


async def _build_pipeline(stack: contextlib.AsyncExitStack, settings: Settings, *,
                          embedder: Embedder, state: InitialState, shared: SharedCentroid,
                          store: StateStore | None, metrics: Metrics) -> Pipeline:
    """Producer (transactional in exactly_once mode), consumer, committer, state sync,
    scorer, outbox and pipeline."""
    exactly_once = settings.delivery == "exactly_once"
    producer = await _started(stack, make_producer(settings.kafka, **(
        {"transactional_id": transactional_id(settings)} if exactly_once else {})))
    consumer = make_consumer(settings.kafka)
    gate = Gate() if exactly_once else None
    committer: Committer = GroupCommitter(consumer)
    if gate is not None:
        txn = TransactionCommitter(producer, settings.kafka.group_id)
        await txn.begin()
        stack.push_async_callback(txn.close)
        committer = txn
    sync: StateSync | None = None
    if store is not None:
        state_producer = producer
        if exactly_once:  # state stays out of the transactions
            state_producer = await _started(stack, make_producer(settings.kafka))
        sync = StateSync(store, shared, state_producer, state.threshold,
                         settings.state.snapshot_interval_s)
        await stack.enter_async_context(sync)
    context = rec.Context(settings.name, __version__, embedder.name, embedder.dimension)
    scorer = Scorer.from_settings(settings, shared.centroid, state.threshold, context,
                                  on_update=shared.record_local if sync is not None else None)
    outbox = Outbox(producer, committer, metrics, alerts_topic=settings.alerts.topic,
                    assigned=consumer.assignment, gate=gate)
    return Pipeline(settings, consumer=consumer, embedder=embedder, scorer=scorer,
                    outbox=outbox, metrics=metrics,
                    on_revoked=sync.publish if sync is not None else None)


async def _started(stack: contextlib.AsyncExitStack, client: _Client) -> _Client:
    await client.start()
    stack.push_async_callback(client.stop)
    return client


async def _serve(stack: contextlib.AsyncExitStack, settings: Settings, pipeline: Pipeline,
                 metrics: Metrics) -> None:
    task = asyncio.current_task()
    server = HealthServer(
        settings.server.host, settings.server.port, metrics,
        live=lambda: _live(task),
        ready=lambda: _ready(pipeline),
    )
    await stack.enter_async_context(server)
    log.info("http server listening", port=server.port)


def _live(task: asyncio.Task[object] | None) -> tuple[bool, str]:
    if task is None or task.done():
        return False, "pipeline task is not running"
    return True, "ok"


def _ready(pipeline: Pipeline) -> tuple[bool, str]:
    if pipeline.fatal is not None:
        return False, f"embedder failed fatally: {pipeline.fatal.code or pipeline.fatal}"
    if not pipeline.joined:
        return False, "not yet a member of the consumer group"
    if not pipeline.owned:
        return True, "ok: standby, no partitions assigned"
    return True, "ok"


def _announce_stop(signum: int) -> None:
    log.info("signal received: draining and stopping", signal=signum)
