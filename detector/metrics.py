"""Prometheus metrics of one detector instance, on a registry of its own.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from detector.model.baselines import Baselines

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIMILARITY_BUCKETS = tuple(round(-0.2 + 0.05 * i, 2) for i in range(25))  # -0.2 .. 1.0


class Metrics:
    """Every metric the daemon exports; names are part of the operations contract."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        # (from /proc; empty where there is none)
        ProcessCollector(registry=r)
        self.consumed = Counter(
            "detector_records_consumed", "Records read from the input topic", registry=r
        )
        self.scored = Counter("detector_records_scored", "Comments embedded and scored", registry=r)
        self.alerts = Counter(
            "detector_alerts", "Alerts acknowledged by the broker", registry=r
        )
        self.dead_letters = Counter(
            "detector_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.embed_requests = Counter(
            "detector_embedding_requests",
            "Embedding requests by outcome (ok, retried, throttled, rejected, fatal, error)",
            ["outcome"],
            registry=r,
        )
        self.embed_seconds = Histogram(
            "detector_embedding_request_seconds",
            "Latency of one embedding call, retries included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("detector_embedding_tokens", "Tokens billed by the API", registry=r)
        self.cost = Counter(
            "detector_embedding_cost_usd", "Estimated embedding cost in USD", registry=r
        )
        self.cache_hits = Counter(
            "detector_embedding_cache_hits",
            "Texts answered by the embedding cache or repeated within a batch", registry=r)
        self.cache_misses = Counter(
            "detector_embedding_cache_misses", "Texts the embedding cache sent on", registry=r)
        self.cache_evictions = Counter(
            "detector_embedding_cache_evictions", "Entries evicted from the embedding cache",
            registry=r)
        self.cache_entries = Gauge(
            "detector_embedding_cache_entries", "Texts held by the embedding cache", registry=r)
        self.tokens_saved = Counter(
            "detector_embedding_tokens_saved",
            "Tokens not sent thanks to the embedding cache (estimated)", registry=r)
        self.cost_saved = Counter(
            "detector_embedding_cost_saved_usd",
            "Estimated embedding cost in USD avoided by the cache", registry=r)
        self.end_to_end = Histogram(
            "detector_end_to_end_seconds",
            "Record timestamp to alert acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.similarity = Histogram(
            "detector_similarity",
            "Similarity of scored comments to the centroid",
            buckets=SIMILARITY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "detector_batch_size",
            "Texts per embedding batch",
            buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64),
            registry=r,
        )
        self.publish_retries = Counter(
            "detector_publish_retries",
            "Outputs (alerts, scores, dead letters) sent again after a failed send",
            registry=r)
        self.inflight = Gauge("detector_inflight_batches", "Batches being embedded", registry=r)
        self.queued = Gauge(
            "detector_queued_batches",
            "Batches in the reorder window: submitted, not yet scored (embedding or waiting "
            "for their turn)", registry=r)
        self.hedges = Counter(
            "detector_embedding_hedges",
            "Second calls sent for a call past the hedge threshold, by which answer was used "
            "(hedge, original)", ["used"], registry=r)
        self.paused = Gauge(
            "detector_paused_partitions", "Partitions paused for backpressure", registry=r
        )
        self.lag = Gauge(
            "detector_consumer_lag", "Records behind the end of each partition",
            ["topic", "partition"], registry=r,
        )
        self.centroid_weight = Gauge("detector_centroid_weight", "Centroid weight w", registry=r)
        self.centroid_version = Gauge(
            "detector_centroid_version", "Centroid updates since creation", registry=r
        )
        self.threshold = Gauge("detector_threshold", "Similarity threshold in force", registry=r)
        self.baseline_keys = Gauge("detector_baseline_keys",
                                   "Per-key baselines held (scoring.key_field)", registry=r)
        self.key_evictions = Gauge(
            "detector_baseline_key_evictions",
            "Per-key baselines evicted (least recently seen) to stay within scoring.max_keys",
            registry=r)
        self.exemplars = Gauge("detector_exemplars",
                               "Exemplars held in all reservoirs (global and per key)",
                               registry=r)
        self.threshold_calibrated = Gauge(
            "detector_threshold_calibrated",
            "1 when the threshold was derived for this model (calibration artifact or seed "
            "file), 0 when it is a configured fixed number", registry=r)
        self.threshold_source = Gauge(
            "detector_threshold_source", "1 for where the threshold in force came from",
            ["source"], registry=r)
        self.calibration = Gauge(
            "detector_calibration_info", "1 for the version of the calibration artifact in "
            "force (detector.state.published)", ["version"], registry=r)
        self.calibrations = Counter(
            "detector_calibrations_published", "Published calibration artifacts seen, by "
            "outcome (adopted, refused)", ["outcome"], registry=r)
        self.drift_windows = Counter(
            "detector_drift_windows_closed", "Drift windows tested (global and per key)",
            registry=r)
        self.drift_events = Counter(
            "detector_drift_events", "Drift events published", ["scope", "moved",
                                                                "classification"], registry=r)
        self.drift_keys_evicted = Counter(
            "detector_drift_keys_evicted", "Per-key drift streams evicted (drift.max_keys)",
            registry=r)
        self.feedback_labels = Counter(
            "detector_feedback_labels", "Operator labels read, by outcome (taught, untaught, "
            "excluded, unchanged, revoked, unresolved, skipped, refused) and reason (applied: "
            "cached, text or source; skipped: unknown_id, other_topic, unknown_partition, "
            "other_replica; unresolved: not_cached; refused: the dead-letter reason, e.g. "
            "text_mismatch, not_consumed, source_unavailable; docs/guide/labels.md)",
            ["outcome", "reason"], registry=r)
        self.feedback_true = Gauge(
            "detector_feedback_true_alerts", "Alerts of this replica labelled anomaly",
            registry=r)
        self.feedback_false = Gauge(
            "detector_feedback_false_alerts", "Alerts of this replica labelled normal",
            registry=r)
        self.topic_missing = Gauge(
            "detector_topic_missing", "1 while a reader waits for its optional topic to "
            "exist (feedback: operator labels, state: other replicas' records)",
            ["reader", "topic"], registry=r)
        self.missing_topics: dict[str, str] = {}  # reader -> topic, for /readyz
        self.ready = Gauge("detector_ready",
                           "1 once the consumer joined its group and the embedder is ok",
                           registry=r)
        self.assigned = Gauge("detector_assigned_partitions",
                              "Input partitions assigned to this replica (0: standby)",
                              registry=r)

    def set_topic_missing(self, reader: str, topic: str, *, missing: bool) -> None:
        """A reader of an optional topic waits for it (or no longer does)."""
        self.topic_missing.labels(reader=reader, topic=topic).set(1 if missing else 0)
        if missing:
            self.missing_topics[reader] = topic
        else:
            self.missing_topics.pop(reader, None)

    def watch_baselines(self, baselines: Baselines) -> None:
        """Export every held baseline's live threshold, its source, admission gate and
        expected false-positive rate, read at scrape time."""
        self.registry.register(_BaselineCollector(baselines))

    def set_threshold_source(self, source: str) -> None:
        """Export where the threshold came from: calibration, seed or fixed."""
        for name in ("calibration", "seed", "fixed"):
            self.threshold_source.labels(source=name).set(1 if name == source else 0)
        self.threshold_calibrated.set(0 if source == "fixed" else 1)


class _BaselineCollector(Collector):
    """detector_baseline_{threshold,gate,expected_fpr}{baseline}: global and each key."""

    def __init__(self, baselines: Baselines) -> None:
        self.baselines = baselines

    def collect(self) -> Iterator[GaugeMetricFamily]:
        threshold = GaugeMetricFamily(
            "detector_baseline_threshold", "Threshold a baseline applies now, by where it "
            "comes from (global, key, pooled)", labels=["baseline", "source"])
        gate = GaugeMetricFamily(
            "detector_baseline_gate", "Score at or above which a comment teaches the "
            "baseline", labels=["baseline"])
        expected = GaugeMetricFamily(
            "detector_baseline_expected_fpr", "Expected false-positive rate of the threshold "
            "derived from the baseline's reference normals (absent: fixed threshold)",
            labels=["baseline"])
        held = self.baselines
        for baseline in held.all():
            name = "global" if baseline.key is None else f"key:{baseline.key}"
            value, source = held.threshold_of(baseline)
            threshold.add_metric([name, source], value)
            gate.add_metric([name], held.gate_of(baseline, value))
            if baseline.derived is not None:
                expected.add_metric([name], baseline.derived.expected_fpr)
        yield threshold
        yield gate
        yield expected
