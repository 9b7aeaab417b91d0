"""Kafka client construction: security settings, clients, topic creation and the
durability check of topics the detector writes to but did not create."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
)

from detector.config import KafkaSettings
from detector.errors import ConfigError, KafkaUnavailableError

log = structlog.get_logger("detector.io.kafka")


def connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Bootstrap and security arguments shared by every aiokafka client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # the settings validator ensures it
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Verification on (system CAs, or kafka.ssl_cafile), with an optional client
    certificate; unreadable or mismatched files are a ConfigError naming the setting."""
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    except (OSError, ssl.SSLError) as exc:
        msg = f"kafka.ssl_cafile {settings.ssl_cafile}: cannot load CA certificates: {exc}"
        raise ConfigError(msg) from None
    if settings.ssl_certfile:
        try:
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None)
        except (OSError, ssl.SSLError) as exc:
            msg = (f"kafka.ssl_certfile {settings.ssl_certfile} / kafka.ssl_keyfile "
                   f"{settings.ssl_keyfile}: cannot load the client certificate and key: {exc}")
            raise ConfigError(msg) from None
    elif settings.ssl_keyfile:
        msg = "kafka.ssl_keyfile is set without kafka.ssl_certfile"
        raise ConfigError(msg)
    return context


def make_consumer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaConsumer:
    """A group consumer with manual commits (offsets are committed by the pipeline)."""
    kwargs: dict[str, Any] = {
        **connection_kwargs(settings),
        "client_id": settings.client_id,
        "group_id": settings.group_id,
        "group_instance_id": settings.group_instance_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_poll_records": settings.max_poll_records,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "isolation_level": "read_committed",
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(**kwargs)


def reader_consumer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer for manual assignment and no group: reads ranges, commits nothing,
    so no consumer group is created or moved (calibrate, replay, the state topic)."""
    kwargs: dict[str, Any] = {
        **connection_kwargs(settings),
        "group_id": None,
        "enable_auto_commit": False,
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(**kwargs)


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for all in-sync replicas."""
    kwargs: dict[str, Any] = {
        **connection_kwargs(settings),
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        # aiokafka's default 16 KiB fills after ~50 score records; every send() behind a
        # full batch then waits for its drain, and those waits were 40 % of the
        # detector's CPU at 7,600 msg/s (py-spy). 512 KiB: 11-12k msg/s, CPU/1000 0.08 s.
        "max_batch_size": 512 * 1024,
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def new_topics(settings: KafkaSettings, topics: dict[str, dict[str, str]],
               partitions: int | None = None) -> list[NewTopic]:
    """Topic specs with the configured replication factor and min.insync.replicas (the
    producer's acks=all then survives one broker down without losing an acked write)."""
    return [
        NewTopic(
            name,
            num_partitions=partitions or settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            topic_configs={"min.insync.replicas": str(settings.min_insync_replicas),
                           **configs},
        )
        for name, configs in topics.items()
    ]


async def ensure_topics(
    settings: KafkaSettings, topics: dict[str, dict[str, str]], partitions: int | None = None
) -> list[str]:
    """Create the named topics (name -> topic configs) that do not exist; return those made."""
    admin = AIOKafkaAdminClient(**connection_kwargs(settings), client_id=settings.client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = new_topics(
            settings, {n: c for n, c in topics.items() if n not in existing}, partitions)
        if missing:
            # Another replica may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("topics created", topics=[t.name for t in missing],
                     replication_factor=settings.topic_replication_factor,
                     min_insync_replicas=settings.min_insync_replicas)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def check_durability(settings: KafkaSettings, topics: list[str]) -> dict[str, str]:
    """Warn about each existing topic that one broker's loss can destroy or that accepts
    acks=all writes on one replica; return {topic: problem} for those."""
    if not topics:
        return {}
    admin = AIOKafkaAdminClient(**connection_kwargs(settings), client_id=settings.client_id)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    except KafkaError as exc:  # e.g. no DescribeConfigs permission: a check, not a gate
        log.warning("cannot check the output topics' durability", error=repr(exc))
        return {}
    finally:
        await admin.close()
    min_insync = {
        resource[3]: int(entry[1])
        for response in responses for resource in response.resources if resource[0] == 0
        for entry in resource[4] if entry[0] == "min.insync.replicas"
    }
    problems: dict[str, str] = {}
    for topic in described:
        if not topic["partitions"]:  # unknown topic (or its metadata is not there yet)
            continue
        name = topic["topic"]
        replicas = min(len(p["replicas"]) for p in topic["partitions"])
        if replicas == 1:
            problems[name] = ("replication factor 1: losing one broker's disk loses it; "
                              "recreate it (or reassign partitions) with 3 replicas")
        elif min_insync.get(name, 1) < 2:
            problems[name] = (f"{replicas} replicas but min.insync.replicas "
                              f"{min_insync.get(name, 1)}: an acknowledged write may exist on "
                              "one broker only; set min.insync.replicas to 2")
    for name, problem in problems.items():
        log.warning("output topic is not durable", topic=name, problem=problem)
    return problems


async def topic_partitions(settings: KafkaSettings, topic: str) -> list[int]:
    """The partition ids of `topic` (empty when it does not exist)."""
    admin = AIOKafkaAdminClient(**connection_kwargs(settings), client_id=settings.client_id)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code", 0) != 0:
        return []
    return sorted(int(p["partition"]) for p in described["partitions"])


async def wait_for_kafka(settings: KafkaSettings, deadline_s: float) -> None:
    """Reach the cluster (and authenticate) before anything else, with bounded back-off.

    Each failure is logged once with its cause (wrong credentials, unreachable broker,
    TLS problem); attempts back off 1, 2, 4 ... 30 s, the last one at the deadline;
    after `deadline_s` a clear
    `KafkaUnavailableError` ends the start (Kubernetes then restarts the pod with its own
    back-off) instead of a hot loop.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    delay = 1.0
    attempt = 0
    while True:
        attempt += 1
        admin = AIOKafkaAdminClient(**connection_kwargs(settings), client_id=settings.client_id,
                                    request_timeout_ms=10_000)
        cause = _LastClientError()
        logging.getLogger("aiokafka").addHandler(cause)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError, ssl.SSLError) as exc:
            reason = _describe_failure(
                exc, cause.message, tls=settings.security_protocol in ("SSL", "SASL_SSL"))
            # the last attempt is made at the deadline, not one back-off step before it
            delay = min(delay, deadline - loop.time())
            if delay <= 0:
                msg = (f"cannot use Kafka at {settings.bootstrap_servers} "
                       f"({settings.security_protocol}) after {attempt} attempts: {reason}")
                raise KafkaUnavailableError(msg) from None
            log.warning("kafka not reachable, retrying", attempt=attempt, reason=reason,
                        retry_in_s=delay)
        finally:
            logging.getLogger("aiokafka").removeHandler(cause)
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(30.0, delay * 2)


class _LastClientError(logging.Handler):
    """aiokafka reports why a bootstrap failed only in its log; keep the last error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


def _describe_failure(exc: BaseException, logged: str, *, tls: bool = False) -> str:
    auth = ("SaslAuthenticationFailed", "AuthenticationFailed", "IllegalSaslState")
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError) or any(
            word in logged for word in auth):
        return ("authentication failed: check kafka.sasl_mechanism, kafka.sasl_username and "
                "DETECTOR_KAFKA__SASL_PASSWORD")
    detail = f" ({logged})" if logged else ""
    described = f"{type(exc).__name__}: {exc}{detail}"
    if "CERTIFICATE_VERIFY_FAILED" in described:
        return ("TLS: the broker's certificate is not trusted or does not match its address: "
                f"check kafka.ssl_cafile and the broker certificate's names ({described})")
    if tls and "closed" in described:
        return ("the broker closed the TLS connection: if its listener requires client "
                "certificates, set kafka.ssl_certfile and kafka.ssl_keyfile to a certificate "
                f"signed by a CA the broker trusts ({described})")
    return described
