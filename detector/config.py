"""Configuration: one frozen settings object, built once at the edge and passed down.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from detector.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config/detector.yaml")
# The keyword argument that carries the YAML file from `load_settings` into the settings
# sources of that one construction (no module state: concurrent loads do not interfere).
CONFIG_FILE_KEY = "_config_file"

# Dimensions each hosted model accepts (DashScope documentation, text-embedding-v3/v4).
MODEL_DIMENSIONS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "text-embedding-v4": (2048, 1536, 1024, 768, 512, 256, 128, 64),
    "text-embedding-v3": (1024, 768, 512),
})
LOCAL_MODEL_NAME = "use-multilingual-v3"
LOCAL_MODEL_DIMENSION = 512


class Section(BaseModel):
    """Base of every configuration section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(Section):
    """How to reach the brokers and behave in the consumer group."""

    @property
    def min_insync_replicas(self) -> int:
        """min.insync.replicas of the topics the detector creates."""
        return self.topic_min_insync_replicas or max(1, self.topic_replication_factor - 1)

    # Brokers, comma-separated host:port.
    bootstrap_servers: str = "127.0.0.1:9092"
    # Consumer group of the input topic.
    group_id: str = "detector"
    # Client id the brokers see (quotas, logs).
    client_id: str = "detector"
    # Static membership: set from the pod name so rolling restarts do not rebalance.
    group_instance_id: str | None = None
    # Where a new group starts reading.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Group liveness: a member silent this long is expelled.
    session_timeout_ms: int = Field(default=30_000, ge=6_000)
    # Heartbeats to the group coordinator.
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    # Longest allowed gap between polls.
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    # How long the coordinator waits for every member to rejoin during a rebalance. A member
    # first finishes the partitions it loses (for up to shutdown_timeout_s); a shorter wait
    # expels it and its rejoin starts another rebalance. null: shutdown_timeout_s + 10 s,
    # and never below session_timeout_ms (aiokafka's own default is the session timeout).
    rebalance_timeout_ms: int | None = Field(default=None, ge=1_000)
    # Records per poll (bounds the un-batched backlog).
    max_poll_records: int = Field(default=500, ge=1)
    # How long the broker may hold a fetch for data.
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    # Offset commit (or transaction) interval.
    commit_interval_ms: int = Field(default=1_000, ge=10)
    connect_deadline_s: float = Field(default=120.0, gt=0)  # reach the cluster at start
    # exactly_once only: a stable id per instance fences zombies (default: name-instance).
    transactional_id: str | None = None
    # Create missing output and state topics at start.
    create_topics: bool = True
    # Partitions of the topics the detector creates.
    topic_partitions: int = Field(default=1, ge=1)
    # Topics the detector creates (outputs, state): replicas and min.insync.replicas.
    # The defaults suit one local broker; the Helm chart sets 3 and 2.
    topic_replication_factor: int = Field(default=1, ge=1)
    # None: one less than the replication factor (at least 1), so one broker may be down.
    topic_min_insync_replicas: int | None = Field(default=None, ge=1)
    # How clients talk to the brokers; SSL verifies the broker's certificate and host name.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # With SASL_*: the mechanism.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # With SASL_*: the user; the password only from DETECTOR_KAFKA__SASL_PASSWORD.
    sasl_username: str | None = None
    # Only from the environment (DETECTOR_KAFKA__SASL_PASSWORD), never logged.
    sasl_password: SecretStr | None = None
    # PEM CA bundle to verify the brokers (default: the system's).
    ssl_cafile: Path | None = None
    # PEM client certificate for mutual TLS.
    ssl_certfile: Path | None = None
    # PEM private key of ssl_certfile.
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _min_insync_fits(self) -> KafkaSettings:
        if (self.topic_min_insync_replicas or 0) > self.topic_replication_factor:
            msg = ("kafka.topic_min_insync_replicas cannot exceed "
                   "kafka.topic_replication_factor: every acks=all write would fail")
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            msg = (
                "kafka.security_protocol is SASL_*: set kafka.sasl_mechanism, "
                "kafka.sasl_username and DETECTOR_KAFKA__SASL_PASSWORD"
            )
            raise ValueError(msg)
        return self


class InputSettings(Section):
    """Where comments come from and how a record's value becomes a comment."""

    # Input topic of comments.
    topic: str = "comments"
    # json: the text is at text_field; raw: the whole value is the text.
    format: Literal["json", "raw"] = "json"
    text_field: str = "text"  # a dotted path reaches nested fields: "payload.body"
    # Dotted path of the comment id (string or integer), copied into alerts.
    id_field: str = "id"
    # Larger values are dead-lettered; kept well under the broker's ~1 MB message limit so
    # that an alert quoting the text can always be published.
    max_bytes: int = Field(default=262_144, ge=1)
    # JSON with more object members (all objects together) is dead-lettered
    # (too_many_fields) before it is parsed: bounds the time one record holds the loop.
    max_fields: int = Field(default=10_000, ge=1)
    # Estimated tokens per text (the API's limit); CJK characters count one.
    max_tokens: int = Field(default=8_192, ge=1)
    # What happens to a text over max_tokens.
    on_too_long: Literal["dead_letter", "truncate"] = "dead_letter"


class EmbeddingSettings(Section):
    """Which embedder turns texts into vectors, and how hard to push it."""

    # local: in-process model, offline; dashscope: DashScope API; openai: any OpenAI-compatible
    # /v1/embeddings server.
    backend: Literal["local", "dashscope", "openai"] = "local"
    # Embedding model; checked against the calibration artifact at start.
    model: str = LOCAL_MODEL_NAME
    # Vector dimension the model returns (text-embedding-v4: 64 to 2048).
    dimension: int = LOCAL_MODEL_DIMENSION
    # Texts per embedding call (at most 10 for text-embedding-v3/v4).
    batch_size: int = Field(default=10, ge=1, le=2048)
    # Longest wait before a partial batch goes.
    linger_ms: int = Field(default=50, ge=0)
    concurrency: int = Field(default=4, ge=1, le=256)  # embedding calls in flight
    # Batches submitted and not yet scored (they are scored in order); None: 16 x
    # concurrency. Bounds memory and uncommitted records to reorder_window x batch_size.
    reorder_window: int | None = Field(default=None, ge=1, le=8192)
    # > 0: a call running past this many times the recent p99 is sent once more
    # (detector.stream.hedge); costs a second call each time, so off by default.
    hedge_after_p99: float = Field(default=0.0, ge=0.0)
    # API base URL (default: the provider's; DashScope mainland: https://dashscope.aliyuncs.com).
    base_url: str | None = None
    # Only from the environment: DETECTOR_EMBEDDING__API_KEY, else DASHSCOPE_API_KEY or
    # OPENAI_API_KEY.
    api_key: SecretStr | None = None
    # Per-request timeout.
    timeout_s: float = Field(default=30.0, gt=0)
    # Connect timeout per request.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # How long the embedder retries one request before the pipeline takes over (it keeps the batch).
    retry_deadline_s: float = Field(default=120.0, gt=0)
    # Backoff before retry n: full jitter over min(retry_max_s, retry_base_s * 2^n), or Retry-After.
    retry_base_s: float = Field(default=0.5, gt=0)
    # Longest backoff between two attempts.
    retry_max_s: float = Field(default=30.0, gt=0)
    # Client-side request rate limit.
    requests_per_minute: int | None = Field(default=None, ge=1)
    # Client-side token rate limit.
    tokens_per_minute: int | None = Field(default=None, ge=1)
    # USD per million tokens, for the cost metric.
    price_per_million_tokens: float = Field(default=0.07, ge=0)
    # DashScope text_type.
    text_type: Literal["document", "query"] = "document"
    # DashScope instruction; only with text_type query.
    instruct: str | None = None
    # Prepended to every text before it is embedded, in the daemon, replay and calibrate
    # alike (e5: "query: "; bge, nomic ... have their own); recorded in calibration artifacts.
    text_prefix: str = Field(default="", max_length=1000)
    # CA file to trust for the API (proxies come from HTTP(S)_PROXY/ALL_PROXY/NO_PROXY).
    ca_bundle: Path | None = None
    # False turns TLS verification of the API off.
    verify_tls: bool = True
    # What carries the HTTP requests under httpx's interface (detector.embedders.client).
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    # Distinct texts whose vectors are kept (detector.embedders.cache); 0 turns it off.
    # 12,000 rows at 1,024 dimensions of float32 are about 50 MB.
    cache_entries: int = Field(default=12_000, ge=0)
    # Local model only: BLAS threads; 0 means the CPUs this process may actually use.
    local_threads: int = Field(default=0, ge=0)

    @property
    def window(self) -> int:
        """The reorder window in batches (see `reorder_window`)."""
        return self.reorder_window or 16 * self.concurrency

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingSettings:
        if self.reorder_window is not None and self.reorder_window < self.concurrency:
            msg = (f"embedding.reorder_window ({self.reorder_window}) must be at least "
                   f"embedding.concurrency ({self.concurrency})")
            raise ValueError(msg)
        if self.instruct is not None and self.text_type != "query":
            msg = "embedding.instruct is only allowed with embedding.text_type: query"
            raise ValueError(msg)
        if self.backend == "local":
            if self.model != LOCAL_MODEL_NAME or self.dimension != LOCAL_MODEL_DIMENSION:
                msg = (
                    f"the local backend is {LOCAL_MODEL_NAME} with dimension "
                    f"{LOCAL_MODEL_DIMENSION}; got model={self.model!r} "
                    f"dimension={self.dimension}"
                )
                raise ValueError(msg)
        elif self.backend == "dashscope":
            allowed = MODEL_DIMENSIONS.get(self.model)
            if allowed is not None and self.dimension not in allowed:
                msg = f"{self.model} supports dimensions {list(allowed)}, not {self.dimension}"
                raise ValueError(msg)
            if self.batch_size > 10 and self.model in MODEL_DIMENSIONS:
                msg = f"{self.model} accepts at most 10 texts per request (batch_size)"
                raise ValueError(msg)
        return self


class ScoringSettings(Section):
    """The centroid, the threshold, and when a comment may move the centroid."""

    # auto: the calibration artifact's threshold, else the target_fpr quantile of the seed
    # file's leave-one-out similarities (the scale belongs to the model); a number is used
    # as it is, with a warning when it is outside the seed's similarity range.
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] | Literal["auto"] = "auto"
    # Share of normal comments allowed below a seed-derived threshold.
    target_fpr: float = Field(default=0.01, gt=0.0, lt=0.5)
    # Thresholds follow their baseline: each is re-derived from the baseline's reference
    # normals (held out at calibration, or the seed) against its current centroid, as the
    # order statistic whose false-positive rate exceeds target_fpr with probability at
    # most 1 - confidence (0.5: the point estimate; keys default to the conservative end).
    threshold_confidence: float = Field(default=0.5, ge=0.5, lt=1.0)
    # The same for a key's own threshold (and the pooled key threshold): a key gets its own
    # only when its reference normals support one at this confidence.
    key_threshold_confidence: float = Field(default=0.9, ge=0.5, lt=1.0)
    # A comment teaches its baselines when it scores at or above this quantile of the
    # reference normals' scores (never below the threshold): a gate on the model's own
    # scale. Without a reference the gate is the threshold.
    admit_quantile: float = Field(default=0.05, ge=0.0, lt=0.5)
    # Below 1 the centroid is an exponential moving mean.
    decay: float = Field(default=1.0, gt=0.0, le=1.0)
    # False freezes the centroid.
    update: bool = True
    # Normal comments (JSONL) embedded at start when there is no calibration artifact.
    seed_file: Path | None = Path("config/normal_comments.jsonl")
    # Artifact of `detector calibrate`; wins over the seed file.
    calibration_file: Path | None = None
    # How a comment is scored: cosine to the centroid, or the mean cosine to the k
    # nearest exemplars of the reservoir (see detector.model.baselines).
    method: Literal["centroid", "knn"] = "centroid"
    # Neighbours of kNN scoring.
    k: int = Field(default=5, ge=1)
    # Per-key baselines: a dotted path into the comment JSON, or "@key" for the record
    # key; unset means one global baseline.
    key_field: str | None = None
    # A key with fewer accepted comments is judged by the global baseline.
    key_min_samples: int = Field(default=50, ge=1)
    # Key baselines held; the least recently seen is evicted.
    max_keys: int = Field(default=1000, ge=1)
    # Accepted normal exemplars kept for kNN scoring and for explaining alerts.
    reservoir_size: int = Field(default=2000, ge=1)
    # Exemplars kept per key baseline.
    key_reservoir_size: int = Field(default=100, ge=1)
    # Nearest normal exemplars attached to each alert (0: none).
    explain_exemplars: int = Field(default=3, ge=0, le=20)
    # Keep exemplars' text (memory, state topic, alerts); off: only topic, partition, offset, id.
    keep_exemplar_text: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_margin(cls, data: Any) -> Any:
        if isinstance(data, dict) and "margin" in data:
            msg = ("scoring.margin (an absolute cosine) is replaced by scoring.admit_quantile, "
                   "a quantile of the reference normals' scores on the model's own scale: "
                   "remove margin")
            raise ValueError(msg)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ScoringSettings:
        if self.key_field is not None and not self.key_field.strip(". "):
            msg = "scoring.key_field must name a field (a dotted path) or be @key"
            raise ValueError(msg)
        return self


class AlertSettings(Section):
    """Where results go."""

    # Alerts (detector.alert/v2), keyed like the input.
    topic: str = "comment-alerts"
    # Dead letters (detector.dead-letter/v1) with their reason.
    dead_letter_topic: str = "comment-dead-letters"
    scores_topic: str | None = None  # every scored comment, for analytics and audits
    drift_topic: str = "detector-drift"  # detector.drift/v1 events (see DriftSettings)


class StateSettings(Section):
    """The centroid shared by all replicas through a compacted topic (see detector.state.store)."""

    # Share the centroid, baselines and published calibrations through `topic`.
    enabled: bool = True
    # Compacted state topic.
    topic: str = "detector-state"
    # How often this replica publishes its contribution: the most a dead replica loses.
    snapshot_interval_s: float = Field(default=10.0, gt=0)
    # Stable name of this replica; default kafka.group_instance_id, else the host name.
    replica_id: str | None = None


class DriftSettings(Section):
    """Windowed drift tests (detector.model.drift, run by detector.operating.drift): events go to
    `alerts.drift_topic`. Needs a calibration artifact with a similarity profile."""

    # Test windows of scored comments against the calibration and publish drift events; needs an
    # artifact with metrics.similarity_profile.
    enabled: bool = False
    # A window closes after this many records or this many seconds, whichever comes first;
    # either may be None (not both).
    window_records: int | None = Field(default=1_000, ge=1)
    # Seconds after which a window closes (null: by records only).
    window_s: float | None = Field(default=3_600.0, gt=0)
    # Probability of at least one false drift event per stream (the global stream or one
    # key) over `budget_windows` windows; spent evenly over windows and the two tests.
    false_alarm_budget: float = Field(default=0.01, gt=0, lt=1)
    # Windows over which false_alarm_budget holds.
    budget_windows: int = Field(default=1_000, ge=1)
    max_keys: int = Field(default=100, ge=0)  # per-key streams held (least recent evicted)
    sample_size: int = Field(default=200, ge=2)  # low-scoring embeddings kept per window

    @model_validator(mode="after")
    def _some_window(self) -> DriftSettings:
        if self.window_records is None and self.window_s is None:
            msg = "drift.window_records and drift.window_s cannot both be null"
            raise ValueError(msg)
        return self


class FeedbackSettings(Section):
    """Operator labels (detector.model.labels, read by detector.operating.labels): every replica
    reads `topic` and applies the labels of the alerts it scored."""

    # Read operator labels (detector.feedback/v1) from `topic` and apply them.
    enabled: bool = False
    # Operator labels; every replica reads all partitions, no group.
    topic: str = "detector-feedback"
    # A `normal` label adds its comment to the centroid with this weight (an accepted
    # comment weighs 1).
    weight: float = Field(default=10.0, gt=0)
    # recent alert embeddings kept (and normal teachings an anomaly label can undo)
    alert_cache_size: int = Field(default=10_000, ge=1)
    max_labels: int = Field(default=100_000, ge=1)  # labelled comments remembered
    # Near-duplicate radius of labelled comments (docs/guide/labels.md): "auto" derives it
    # from the model's own scale (the calibration artifact's pairwise q0.999, or the seed
    # rows'); a float is a cosine in (0, 1].
    label_radius: Literal["auto"] | Annotated[float, Field(gt=0, le=1)] = "auto"
    memory_size: int = Field(default=10_000, ge=1)  # labelled embeddings remembered
    # Labels of offsets not consumed yet wait this long, then are refused `not_consumed`.
    pending_s: float = Field(default=300.0, gt=0)
    # At most this many labels wait; more are refused `not_consumed` at once.
    max_pending: int = Field(default=1000, ge=0)


class ServerSettings(Section):
    """The small HTTP server for /metrics, /healthz and /readyz."""

    # Serve /metrics, /healthz and /readyz.
    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the pod
    # Port of the HTTP server (0: any free port).
    port: int = Field(default=8080, ge=0, le=65535)


class LogSettings(Section):
    """Log level and rendering."""

    # Log level.
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: console on a terminal, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """Everything `detector` needs, validated once at start."""

    model_config = SettingsConfigDict(
        env_prefix="DETECTOR_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    # Detector name: key prefix in the state topic, default transactional id prefix.
    name: str = "detector"
    # at_least_once: idempotent outputs, then the offset commit; exactly_once: outputs and offsets
    # in one transaction per commit interval (readers use read_committed).
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # Drain budget after SIGTERM: finish in-flight batches, commit, publish state.
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    kafka: KafkaSettings = KafkaSettings()
    input: InputSettings = InputSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    scoring: ScoringSettings = ScoringSettings()
    alerts: AlertSettings = AlertSettings()
    state: StateSettings = StateSettings()
    drift: DriftSettings = DriftSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    server: ServerSettings = ServerSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then DETECTOR_* variables, then the YAML file that
        `load_settings` passes in the keyword argument `CONFIG_FILE_KEY` (this call's own)."""
        yaml_path = None
        if isinstance(init_settings, InitSettingsSource):
            yaml_path = init_settings.init_kwargs.pop(CONFIG_FILE_KEY, None)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _rebalance_covers_the_drain(self) -> Settings:
        given = self.kafka.rebalance_timeout_ms
        if given is not None and given < self.shutdown_timeout_s * 1000:
            msg = (f"kafka.rebalance_timeout_ms ({given}) is shorter than shutdown_timeout_s "
                   f"({self.shutdown_timeout_s:g} s): a replica finishes the partitions it "
                   "loses before it rejoins, so the group would expel it and rebalance again")
            raise ValueError(msg)
        return self

    def rebalance_timeout_ms(self) -> int:
        """The group's rebalance timeout: `kafka.rebalance_timeout_ms`, else long enough
        for a replica to finish its revoked partitions (shutdown_timeout_s) and rejoin."""
        if self.kafka.rebalance_timeout_ms is not None:
            return self.kafka.rebalance_timeout_ms
        return max(self.kafka.session_timeout_ms, round(self.shutdown_timeout_s * 1000) + 10_000)

    def api_key(self) -> SecretStr | None:
        """The embedding API key: explicit setting first, then the provider's usual variable."""
        if self.embedding.api_key is not None:
            return self.embedding.api_key
        var = {"dashscope": "DASHSCOPE_API_KEY", "openai": "OPENAI_API_KEY"}.get(
            self.embedding.backend
        )
        value = os.environ.get(var) if var else None
        return SecretStr(value) if value else None


def config_file(config_path: Path | str | None = None) -> Path | None:
    """The YAML file the settings are read from: `config_path`, else $DETECTOR_CONFIG,
    else config/detector.yaml when it exists, else none."""
    path = Path(config_path) if config_path else None
    if path is None and os.environ.get("DETECTOR_CONFIG"):
        path = Path(os.environ["DETECTOR_CONFIG"])
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return path


def load_settings(config_path: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation failures into a `ConfigError` naming the field."""
    path = config_file(config_path)
    if path is not None and not path.is_file():
        msg = f"configuration file not found: {path}"
        raise ConfigError(msg)
    values: dict[str, Any] = {**overrides, CONFIG_FILE_KEY: path}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" (from {path} and DETECTOR_* variables)" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)
