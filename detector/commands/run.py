"""`detector run`: wire settings, embedder, Kafka clients, pipeline and HTTP server together.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from detector import __version__
from detector.config import Settings
from detector.embedders import Embedder, build_embedder
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
from detector.model.scorer import Scorer
from detector.operating import startup
from detector.operating import wiring as operating
from detector.operating.startup import InitialState
from detector.signals import install_stop_handlers
from detector.state.label_records import SharedLabels
from detector.state.sharing import Scope, SharedBaselines
from detector.state.store import ReplicaRecord, SharedCentroid, StateStore, StateSync
from detector.stream.delivery import Committer, Gate, GroupCommitter, Outbox, TransactionCommitter
from detector.stream.embedding import BatchEmbedder
from detector.stream.pipeline import Pipeline

log = structlog.get_logger("detector.commands.run")
_Client = TypeVar("_Client", AIOKafkaProducer, AIOKafkaConsumer)


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
        state, shared, baselines, store, labels = await _starting_point(settings, embedder)
        metrics.set_threshold_source(state.source)
        pipeline = await _build_pipeline(stack, settings, embedder=embedder, state=state,
                                         shared=shared, baselines=baselines, store=store,
                                         metrics=metrics, labels=labels)
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
                                     StateStore | None, SharedLabels | None]:
    """The base, the output topics, the shared centroid (base + every replica's published
    contribution), the shared baselines (per key, exemplars) and the label memory
    (`feedback.enabled`) restored the same way.
    The cluster is only read until the base is decided: a refused artifact changes nothing."""
    await wait_for_kafka(settings.kafka, settings.kafka.connect_deadline_s)
    if not await topic_partitions(settings.kafka, settings.input.topic):
        msg = (f"input topic {settings.input.topic!r} does not exist on "
               f"{settings.kafka.bootstrap_servers}; create it or fix input.topic")
        raise ConfigError(msg)
    store = StateStore(settings) if settings.state.enabled else None
    records: dict[str, ReplicaRecord] = {}
    published = None
    if store is not None:
        records = await store.load()
        published = startup.published(settings, embedder, store.calibration)
    state = await startup.initial_state(settings, embedder, published)
    outputs = list(output_topics(settings))
    created: list[str] = []
    if settings.kafka.create_topics:
        created = await ensure_topics(settings.kafka, output_topics(settings))
    if store is not None:
        outputs.append(settings.state.topic)
        if settings.kafka.create_topics:
            created += await store.ensure_topic()
    replica = replica_id(settings)
    baselines = SharedBaselines(
        state.baselines(settings, replica),
        Scope(replica, state.origin, embedder.name, embedder.dimension),
        keep_text=settings.scoring.keep_exemplar_text)
    shared = SharedCentroid(baselines.baselines.global_, replica, state.origin, embedder.name)
    memory = baselines.baselines.memory
    labels = None if memory is None else SharedLabels(memory, replica, embedder.name,
                                                      sharing=store is not None)
    if store is not None:
        if labels is not None:
            store.restore_labels(labels)
        ignored = shared.restore(records)
        if ignored:
            log.warning("state of other bases or models ignored; starting from the base",
                        replicas=ignored)
        store.restore_shared(baselines)
        # the global contribution just restored is on the state topic already
        baselines.restored(shared.own.updates)
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
             exemplars=len(baselines.baselines.global_.reservoir),
             labels_remembered=None if memory is None else len(memory))
    return state, shared, baselines, store, labels


async def _build_pipeline(stack: contextlib.AsyncExitStack, settings: Settings, *,
                          embedder: Embedder, state: InitialState, shared: SharedCentroid,
                          baselines: SharedBaselines, store: StateStore | None,
                          metrics: Metrics, labels: SharedLabels | None = None) -> Pipeline:
    """Producer (transactional in exactly_once mode), consumer, committer, outbox, the
    operating stages, state sync (handing published artifacts to the adopter), scorer and
    pipeline."""
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
    outbox = Outbox(producer, committer, metrics, alerts_topic=settings.alerts.topic,
                    assigned=consumer.assignment, gate=gate)
    context = rec.Context(settings.name, __version__, embedder.name, embedder.dimension)
    held = baselines.baselines
    stages = operating.build(settings, artifact=state.artifact, version=state.version,
                             held=held, metrics=metrics, embedder=embedder, outbox=outbox,
                             context=context, shared=shared, baselines=baselines,
                             sharing=store is not None, labels=labels)
    sync: StateSync | None = None
    if store is not None:
        state_producer = producer
        if exactly_once:  # state stays out of the transactions
            state_producer = await _started(stack, make_producer(settings.kafka))
        sync = StateSync(store, shared, state_producer, settings.state.snapshot_interval_s,
                         baselines=baselines, on_calibration=stages.adopt, metrics=metrics,
                         labels=labels)
        await stack.enter_async_context(sync)
    scorer = Scorer.from_settings(settings, context, baselines=held)
    metrics.baseline_keys.set_function(lambda: len(held.keys))
    metrics.key_evictions.set_function(lambda: held.evictions)
    metrics.exemplars.set_function(lambda: sum(len(b.reservoir) for b in held.all()))
    pipeline = Pipeline(settings, consumer=consumer, scorer=scorer, outbox=outbox,
                        embedding=BatchEmbedder.from_settings(embedder, settings.embedding,
                                                              metrics), metrics=metrics,
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
        ready=lambda: _ready(started.pipeline, metrics.missing_topics),
    )
    await stack.enter_async_context(server)
    log.info("http server listening", port=server.port)


def _live(task: asyncio.Task[object] | None) -> tuple[bool, str]:
    if task is None or task.done():
        return False, "pipeline task is not running"
    return True, "ok"


def _ready(pipeline: Pipeline | None, missing: dict[str, str] | None = None
           ) -> tuple[bool, str]:
    """Readiness, and why; `missing` (reader -> topic: optional topics waited for) is
    reported in the detail without making the replica unready: scoring does not need
    them."""
    if pipeline is None:
        return False, "starting: connecting to Kafka, loading the centroid"
    if pipeline.fatal is not None:
        return False, f"embedder failed fatally: {pipeline.fatal.code or pipeline.fatal}"
    if not pipeline.joined:
        return False, "not yet a member of the consumer group"
    detail = "".join(f"; waiting for topic {topic!r} ({reader}: not read until it exists)"
                     for reader, topic in sorted((missing or {}).items()))
    if not pipeline.owned:
        return True, "ok: standby, no partitions assigned" + detail
    return True, "ok" + detail


def _announce_stop(signum: int) -> None:
    log.info("signal received: draining and stopping", signal=signum)
