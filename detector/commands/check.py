"""`detector check`: verify a configuration before it runs, without consuming or producing.

Each check gives one line (`ok` or `FAIL` and why); a check that needs an earlier one
that failed is reported as `skip`. The command exits 7 when any check failed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from detector.calibration.artifact import load_artifact
from detector.calibration.samples import read_texts
from detector.commands.run import output_topics
from detector.config import Settings
from detector.errors import DetectorError
from detector.exits import EXIT_CHECK_FAILED, EXIT_OK
from detector.io.kafka import connection_kwargs, new_topics
from detector.operating.startup import usable

Outcome = Literal["ok", "FAIL", "skip"]
_T = TypeVar("_T")
# Kafka error codes the admin API answers with (protocol constants).
UNKNOWN_TOPIC = 3
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
# Bits of a resource's authorized_operations (the ACL operation codes).
ACL_READ = 1 << 3
ACL_NOT_REQUESTED = -(2**31)


@dataclass(frozen=True)
class Result:
    """One check's outcome."""

    name: str
    outcome: Outcome
    detail: str

    def line(self) -> str:
        return f"{self.outcome:<4}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class _Model:
    """The configured embedder's identity, enough to compare an artifact with it offline."""

    name: str
    dimension: int


def _reason(exc: BaseException) -> str:
    """``Type: message`` without repeating the type when the message starts with it."""
    text = str(exc)
    kind = type(exc).__name__
    return text if text.startswith(kind) else f"{kind}: {text}".rstrip(": ")


async def _retrying(call: Callable[[], Awaitable[_T]], deadline_s: float) -> _T:
    """`call()`, again after half a second while it fails retriably (a new cluster's
    group coordinator takes a moment), for at most `deadline_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(deadline_s, 10.0)
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or loop.time() > deadline:
                raise
        await asyncio.sleep(0.5)


def _attempt(name: str, step: Callable[[], str]) -> Result:
    try:
        return Result(name, "ok", step())
    except (DetectorError, OSError, ValueError, ssl.SSLError) as exc:
        return Result(name, "FAIL", str(exc))


def file_checks(settings: Settings) -> Iterator[Result]:
    """Files named in the configuration exist and parse; the artifact fits the embedder."""
    scoring = settings.scoring
    if scoring.calibration_file is not None:
        path = scoring.calibration_file

        def artifact() -> str:
            loaded = load_artifact(path)
            model = _Model(settings.embedding.model, settings.embedding.dimension)
            usable(loaded, settings, model)  # type: ignore[arg-type]  # name and dimension
            return (f"{path}: threshold {loaded.threshold:.4f}, {loaded.model.name} "
                    f"({loaded.model.dimension} dimensions)")

        yield _attempt("calibration artifact", artifact)
    if scoring.seed_file is not None:
        seed = scoring.seed_file

        def seed_file() -> str:
            if not seed.is_file():
                if scoring.calibration_file is not None:
                    return f"{seed} absent (not needed: a calibration artifact is set)"
                msg = f"{seed} does not exist and no calibration artifact is set"
                raise FileNotFoundError(msg)
            texts = read_texts(seed, settings.input)
            if not texts:
                msg = f"{seed} has no usable comment"
                raise ValueError(msg)
            return f"{seed}: {len(texts)} comments"

        yield _attempt("seed file", seed_file)
    if settings.kafka.security_protocol in ("SSL", "SASL_SSL"):
        kafka = settings.kafka

        def tls() -> str:
            connection_kwargs(kafka)  # builds the SSL context: reads CA, cert and key
            named = [f"{key} {value}" for key, value in (
                ("ssl_cafile", kafka.ssl_cafile), ("ssl_certfile", kafka.ssl_certfile),
                ("ssl_keyfile", kafka.ssl_keyfile)) if value is not None]
            return ", ".join(named) + " load" if named else "system CA bundle"

        yield _attempt("kafka TLS files", tls)


def api_key_check(settings: Settings) -> Result | None:
    """A remote backend has its API key (the value is never shown)."""
    backend = settings.embedding.backend
    if backend == "local":
        return None
    if settings.api_key() is None:
        var = "DASHSCOPE_API_KEY" if backend == "dashscope" else "OPENAI_API_KEY"
        return Result("embedding API key", "FAIL",
                      f"not set: DETECTOR_EMBEDDING__API_KEY or {var}")
    return Result("embedding API key", "ok", "set")


async def embedding_check(settings: Settings) -> Result:
    """One embedding call of one text succeeds and has the configured dimension."""
    from detector.embedders import build_embedder

    name = "embedding call"
    try:
        embedder = build_embedder(settings)
        try:
            rows = await embedder.embed(["detector check"])
        finally:
            await embedder.aclose()
    except (DetectorError, OSError, KafkaError, ValueError) as exc:
        return Result(name, "FAIL", _reason(exc))
    if rows.shape != (1, settings.embedding.dimension):
        return Result(name, "FAIL", f"expected 1 x {settings.embedding.dimension}, got "
                                    f"{rows.shape[0]} x {rows.shape[1]}")
    return Result(name, "ok", f"{settings.embedding.backend} {settings.embedding.model}, "
                              f"{settings.embedding.dimension} dimensions")


async def kafka_checks(settings: Settings, timeout_s: float) -> list[Result]:
    """Brokers, input topic and group, and output topics, through the admin API."""
    kafka = settings.kafka
    try:
        admin = AIOKafkaAdminClient(**connection_kwargs(kafka), client_id=kafka.client_id,
                                    request_timeout_ms=round(timeout_s * 1000))
    except DetectorError as exc:  # unreadable TLS files: already reported above
        return [Result("kafka brokers", "FAIL", str(exc))]
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except (KafkaError, OSError, ssl.SSLError, TimeoutError) as exc:
        await admin.close()
        return [Result("kafka brokers", "FAIL", f"{kafka.bootstrap_servers} "
                                                f"({kafka.security_protocol}): {_reason(exc)}"),
                Result("input topic", "skip", "brokers unreachable"),
                Result("consumer group", "skip", "brokers unreachable"),
                Result("output topics", "skip", "brokers unreachable")]
    try:
        brokers = len(cluster.get("brokers", []))
        results = [Result("kafka brokers", "ok",
                          f"{kafka.bootstrap_servers} ({kafka.security_protocol}): "
                          f"{brokers} broker{'s' if brokers != 1 else ''}")]
        results.append(await _input_topic(admin, settings))
        results.append(await _group(admin, settings))
        results.append(await _outputs(admin, settings, brokers))
        return results
    finally:
        await admin.close()


async def _input_topic(admin: AIOKafkaAdminClient, settings: Settings) -> Result:
    topic = settings.input.topic
    name = "input topic"
    try:
        [described] = await admin.describe_topics([topic])
    except KafkaError as exc:
        return Result(name, "FAIL", f"{topic}: {_reason(exc)}")
    code = described.get("error_code", 0)
    if code == UNKNOWN_TOPIC or (code == 0 and not described["partitions"]):
        return Result(name, "FAIL", f"{topic} does not exist")
    if code == TOPIC_AUTHORIZATION_FAILED:
        return Result(name, "FAIL", f"{topic}: not authorized to describe it (ACL)")
    if code != 0:
        return Result(name, "FAIL", f"{topic}: error code {code}")
    return Result(name, "ok", f"{topic}: {len(described['partitions'])} partitions")


async def _group(admin: AIOKafkaAdminClient, settings: Settings) -> Result:
    group = settings.kafka.group_id
    name = "consumer group"
    try:
        [response] = await _retrying(lambda: admin.describe_consumer_groups(
            [group], include_authorized_operations=True), settings.kafka.connect_deadline_s)
    except KafkaError as exc:
        return Result(name, "FAIL", f"{group}: {_reason(exc)}")
    described: dict[str, Any] = response.to_object()["groups"][0]
    code = described["error_code"]
    if code == GROUP_AUTHORIZATION_FAILED:
        return Result(name, "FAIL", f"{group}: not authorized (ACL: Read and Describe "
                                    "on the group)")
    if code != 0:
        return Result(name, "FAIL", f"{group}: error code {code}")
    operations = described.get("authorized_operations", ACL_NOT_REQUESTED)
    if operations not in (ACL_NOT_REQUESTED, 0) and not operations & ACL_READ:
        return Result(name, "FAIL", f"{group}: the principal may not Read the group (ACL)")
    state = described.get("state") or "Dead"
    members = len(described["members"])
    detail = "new (no member yet)" if state == "Dead" else f"{state}, {members} members"
    return Result(name, "ok", f"{group}: {detail}")


async def _outputs(admin: AIOKafkaAdminClient, settings: Settings, brokers: int) -> Result:
    name = "output topics"
    kafka = settings.kafka
    wanted = dict(output_topics(settings))
    if settings.state.enabled:
        wanted[settings.state.topic] = {"cleanup.policy": "compact"}
    try:
        existing = set(await admin.list_topics())
    except KafkaError as exc:
        return Result(name, "FAIL", _reason(exc))
    missing = {topic: configs for topic, configs in wanted.items() if topic not in existing}
    present = [topic for topic in wanted if topic in existing]
    if not missing:
        return Result(name, "ok", ", ".join(present) + " exist")
    if not kafka.create_topics:
        return Result(name, "FAIL", f"{', '.join(missing)} missing and "
                                    "kafka.create_topics is false")
    if kafka.topic_replication_factor > brokers:
        return Result(name, "FAIL", f"{', '.join(missing)} missing; replication factor "
                                    f"{kafka.topic_replication_factor} needs that many "
                                    f"brokers, the cluster has {brokers}")
    try:
        response = await admin.create_topics(new_topics(kafka, missing, partitions=1),
                                             validate_only=True)
    except KafkaError as exc:
        return Result(name, "FAIL", f"cannot validate creating {', '.join(missing)}: "
                                    f"{_reason(exc)}")
    refused = [f"{topic} (error {code}{': ' + text if text else ''})"
               for topic, code, *rest in response.topic_errors if code != 0
               for text in [rest[0] if rest else None]]
    if refused:
        return Result(name, "FAIL", "may not be created: " + ", ".join(refused))
    made = (f"{', '.join(missing)} missing, may be created (replication "
            f"{kafka.topic_replication_factor})")
    return Result(name, "ok", f"{', '.join(present)} exist; {made}" if present else made)


async def checks(settings: Settings, *, offline: bool, timeout_s: float) -> list[Result]:
    """Every check, in the order they are printed."""
    results = list(file_checks(settings))
    key = api_key_check(settings)
    if key is not None:
        results.append(key)
    if offline:
        results.append(Result("embedding call", "skip", "--offline"))
    elif key is not None and key.outcome == "FAIL":
        results.append(Result("embedding call", "skip", "no API key"))
    else:
        results.append(await embedding_check(settings))
    results.extend(await kafka_checks(settings, timeout_s))
    return results


def command(settings: Settings, *, offline: bool, timeout_s: float, out: TextIO) -> int:
    """Run the checks, print one line each, and exit 7 when any failed."""
    results = asyncio.run(checks(settings, offline=offline, timeout_s=timeout_s))
    for result in results:
        out.write(result.line() + "\n")
    failed = sum(result.outcome == "FAIL" for result in results)
    passed = sum(result.outcome == "ok" for result in results)
    out.write(f"{failed} failed, {passed} ok, {len(results) - failed - passed} skipped\n")
    return EXIT_CHECK_FAILED if failed else EXIT_OK
