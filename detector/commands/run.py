"""`detector run`: wire settings, embedder, Kafka clients, pipeline and HTTP server together.

Start-up order: health server (/healthz answers at once, /readyz only once the consumer
joined its group, so a slow broker cannot get the pod killed by its liveness probe
while `kafka.connect_deadline_s` bounds the wait) → embedder → output topics → the
state topic (replicas' contributions and the published calibration artifact) → base
centroid (the artifact in force, detector.state.published, else the seed file) → producer →
consumer (subscribed with the rebalance listener) → state sync (which hands newly
published artifacts to the `Adopter`) → drift stage and feedback reader when enabled →
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
from detector.calibration.artifact import CalibrationArtifact
from detector.calibration.seed import ThresholdOrigin, seed_start
from detector.config import Settings
from detector.embedders import Embedder, build_embedder
from detector.embedders.base import Matrix
from detector.errors import ConfigError
from detector.exits import EXIT_FATAL_EMBEDDING, EXIT_OK, EXIT_TRANSACTION
from detector.io import records as rec
from detector.io.kafka import (
    check_durability,
    ensure_topics,
    make_consumer,
    make_producer,
    topic_partitions,
    wait_for_kafka,
)
from detector.io.server import HealthServer
from detector.metrics import Metrics
from detector.model.baselines import Baselines
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref
from detector.model.scorer import Scorer
from detector.operating import startup
from detector.operating import wiring as operating
from detector.signals import install_stop_handlers
from detector.state.published import Published, in_force
from detector.state.sharing import Scope, SharedBaselines
from detector.state.store import ReplicaRecord, SharedCentroid, StateStore, StateSync
from detector.stream.delivery import Committer, Gate, GroupCommitter, Outbox, TransactionCommitter
from detector.stream.pipeline import Pipeline

log = structlog.get_logger("detector.commands.run")
_Client = TypeVar("_Client", AIOKafkaProducer, AIOKafkaConsumer)


@dataclass(frozen=True, slots=True)
class InitialState:
    """The centroid and threshold the detector starts with, and where they came from."""

    centroid: Centroid
    threshold: float
    origin: str
    source: ThresholdOrigin = "fixed"  # calibration | seed (derived) | fixed (configured)
    artifact: CalibrationArtifact | None = None
    seed: tuple[Matrix, list[Ref]] | None = None  # embedded seed rows and their references
    version: str | None = None  # the artifact's version (detector.state.published)

    def baselines(self, settings: Settings, replica: str) -> Baselines:
        """The global baseline around `centroid`, with the artifact's or seed's exemplars,
        and the artifact's per-key bases."""
        return startup.build(settings.scoring, self.centroid, self.threshold,
                             artifact=self.artifact, seed=self.seed, replica=replica)


async def initial_state(settings: Settings, embedder: Embedder,
                        published: Published | None = None) -> InitialState:
    """The calibration artifact in force (the published one unless the configured file is
    newer; detector.state.published), else the seed file embedded now."""
    scoring = settings.scoring
    prefix = settings.embedding.text_prefix
    if scoring.calibration_file is not None or published is not None:
        from detector.calibration.artifact import check_compatible

        artifact, version = in_force(settings, published)
        assert artifact is not None
        check_compatible(artifact, embedder.name, embedder.dimension, prefix)
        startup.check_artifact(artifact, scoring)
        centroid = Centroid.from_dict(artifact.centroid)
        centroid.decay = scoring.decay
        if scoring.threshold != "auto":
            log.warning("scoring.threshold is ignored: the calibration artifact's threshold "
                        "is used", configured=scoring.threshold, used=artifact.threshold)
        if published is not None and artifact is published.artifact:
            origin = published.origin
        else:
            assert scoring.calibration_file is not None
            origin = f"calibration:{_digest(scoring.calibration_file)}"
        return InitialState(centroid, artifact.threshold, origin, "calibration", artifact,
                            version=version)
    if scoring.seed_file is None:
        msg = "set scoring.calibration_file or scoring.seed_file: the detector needs a centroid"
        raise ConfigError(msg)
    start = await seed_start(scoring.seed_file, settings, embedder)
    # a prefix changes every vector: the shared state of another prefix is another base
    origin = f"seed:{_digest(scoring.seed_file, prefix)}"
    seed = None
    if start.rows is not None:
        seed = (start.rows, [Ref(f"seed:{scoring.seed_file.name}", -1, i)
                             for i in range(len(start.rows))])
    return InitialState(start.centroid, start.threshold, origin, start.source, seed=seed)


def _digest(path: Path, extra: str = "") -> str:
    """A short content hash: shared state is reused only while its base is unchanged."""
    try:
        return hashlib.sha256(path.read_bytes() + extra.encode()).hexdigest()[:16]
    except OSError as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg) from None


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
    if settings.drift.enabled:
        topics[settings.alerts.drift_topic] = {}
    if settings.feedback.enabled:  # written by operators; created so replicas can read it
        topics[settings.feedback.topic] = {}
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
        started = _Started()
        if settings.server.enabled:
            await _serve(stack, settings, started, metrics)
        if embedder is None:
            embedder = build_embedder(settings, metrics)
            stack.push_async_callback(embedder.aclose)
        if handle_signals:
            install_stop_handlers(stop, announce=_announce_stop)
        state, shared, baselines, store = await _starting_point(settings, embedder)
        metrics.set_threshold_source(state.source)
        pipeline = await _build_pipeline(stack, settings, embedder=embedder, state=state,
                                         shared=shared, baselines=baselines, store=store,
                                         metrics=metrics)
        pipeline.consumer.subscribe([settings.input.topic], listener=pipeline.listener())
        await _started(stack, pipeline.consumer)
        started.pipeline = pipeline
        await pipeline.run(stop)
        log.info("detector stopped", fatal=pipeline.fatal is not None,
                 transaction_failed=pipeline.failure is not None)
        if pipeline.failure is not None:
            return EXIT_TRANSACTION
        return EXIT_FATAL_EMBEDDING if pipeline.fatal is not None else EXIT_OK
    return EXIT_OK  # pragma: no cover - the context manager does not swallow exceptions


async def _starting_point(settings: Settings, embedder: Embedder
                          ) -> tuple[InitialState, SharedCentroid, SharedBaselines,
                                     StateStore | None]:
    """The base, the output topics, the shared centroid (base + every replica's published
    contribution) and the shared baselines (per key, exemplars) restored the same way."""
    await wait_for_kafka(settings.kafka, settings.kafka.connect_deadline_s)
    if not await topic_partitions(settings.kafka, settings.input.topic):
        msg = (f"input topic {settings.input.topic!r} does not exist on "
               f"{settings.kafka.bootstrap_servers}; create it or fix input.topic")
        raise ConfigError(msg)
    outputs = list(output_topics(settings))
    created: list[str] = []
    if settings.kafka.create_topics:
        created = await ensure_topics(settings.kafka, output_topics(settings))
    store = StateStore(settings) if settings.state.enabled else None
    records: dict[str, ReplicaRecord] = {}
    published = None
    if store is not None:
        outputs.append(settings.state.topic)
        if settings.kafka.create_topics:
            created += await store.ensure_topic()
        records = await store.load()
        published = operating.published_at_start(settings, embedder, store.calibration)
    state = await initial_state(settings, embedder, published)
    replica = replica_id(settings)
    baselines = SharedBaselines(
        state.baselines(settings, replica),
        Scope(replica, state.origin, embedder.name, embedder.dimension),
        keep_text=settings.scoring.keep_exemplar_text)
    shared = SharedCentroid(baselines.baselines.global_, replica, state.origin, embedder.name)
    baselines.baselines.calibration = state.version
    if store is not None:
        ignored = shared.restore(records)
        if ignored:
            log.warning("state of other bases or models ignored; starting from the base",
                        replicas=ignored)
        store.restore_shared(baselines)
        # the global contribution just restored is on the state topic already
        baselines.published[None] = shared.own.updates
    await check_durability(settings.kafka, [t for t in outputs if t not in created])
    log.info("detector starting", version=__version__, origin=state.origin,
             threshold=state.threshold, threshold_source=state.source,
             calibration=state.version, model=embedder.name,
             dimension=embedder.dimension,
             replica=shared.replica, centroid_version=shared.centroid.version,
             centroid_weight=shared.centroid.weight, input=settings.input.topic,
             group=settings.kafka.group_id, delivery=settings.delivery,
             method=settings.scoring.method, key_field=settings.scoring.key_field,
             key_baselines=len(baselines.baselines.keys),
             exemplars=len(baselines.baselines.global_.reservoir))
    return state, shared, baselines, store


async def _build_pipeline(stack: contextlib.AsyncExitStack, settings: Settings, *,
                          embedder: Embedder, state: InitialState, shared: SharedCentroid,
                          baselines: SharedBaselines, store: StateStore | None,
                          metrics: Metrics) -> Pipeline:
    """Producer (transactional in exactly_once mode), consumer, committer, state sync,
    scorer, outbox and pipeline."""
    exactly_once = settings.delivery == "exactly_once"
    producer = await _started(stack, make_producer(settings.kafka, **(
        {"transactional_id": transactional_id(settings)} if exactly_once else {})))
    consumer = make_consumer(settings.kafka, rebalance_timeout_ms=settings.rebalance_timeout_ms())
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
                         settings.state.snapshot_interval_s, baselines=baselines)
        await stack.enter_async_context(sync)
    context = rec.Context(settings.name, __version__, embedder.name, embedder.dimension)
    scorer = Scorer.from_settings(settings, context, baselines=baselines.baselines)
    held = baselines.baselines
    metrics.baseline_keys.set_function(lambda: len(held.keys))
    metrics.key_evictions.set_function(lambda: held.evictions)
    metrics.exemplars.set_function(lambda: sum(len(b.reservoir) for b in held.all()))
    outbox = Outbox(producer, committer, metrics, alerts_topic=settings.alerts.topic,
                    assigned=consumer.assignment, gate=gate)
    stages = operating.build(settings, artifact=state.artifact, version=state.version,
                             held=held, metrics=metrics, embedder=embedder, outbox=outbox,
                             context=context, shared=shared, baselines=baselines, sync=sync,
                             store=store)
    pipeline = Pipeline(settings, consumer=consumer, embedder=embedder, scorer=scorer,
                        outbox=outbox, metrics=metrics,
                        on_revoked=sync.publish if sync is not None else None,
                        on_scored=stages.on_scored)
    await stack.enter_async_context(stages.attach(pipeline))
    return pipeline


async def _started(stack: contextlib.AsyncExitStack, client: _Client) -> _Client:
    await client.start()
    stack.push_async_callback(client.stop)
    return client


@dataclass(slots=True)
class _Started:
    """The pipeline once built: /readyz waits for it, /healthz does not."""

    pipeline: Pipeline | None = None


async def _serve(stack: contextlib.AsyncExitStack, settings: Settings, started: _Started,
                 metrics: Metrics) -> None:
    task = asyncio.current_task()
    server = HealthServer(
        settings.server.host, settings.server.port, metrics,
        live=lambda: _live(task),
        ready=lambda: _ready(started.pipeline),
    )
    await stack.enter_async_context(server)
    log.info("http server listening", port=server.port)


def _live(task: asyncio.Task[object] | None) -> tuple[bool, str]:
    if task is None or task.done():
        return False, "pipeline task is not running"
    return True, "ok"


def _ready(pipeline: Pipeline | None) -> tuple[bool, str]:
    if pipeline is None:
        return False, "starting: connecting to Kafka, loading the centroid"
    if pipeline.fatal is not None:
        return False, f"embedder failed fatally: {pipeline.fatal.code or pipeline.fatal}"
    if not pipeline.joined:
        return False, "not yet a member of the consumer group"
    if not pipeline.owned:
        return True, "ok: standby, no partitions assigned"
    return True, "ok"


def _announce_stop(signum: int) -> None:
    log.info("signal received: draining and stopping", signal=signum)
