"""The session's Kafka broker: $KAFKA_BOOTSTRAP_SERVERS, else testcontainers when a
Docker engine answers, else a local broker from Maven jars (devtools.broker)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin import NewTopic as TopicSpec

from devtools.broker import LocalKafka
from tests.helpers import NewTopic, wait_for


def _docker_kafka() -> Any | None:
    """A started testcontainers Kafka, or None when no Docker engine is reachable."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return None  # no engine; and the docker client leaks a socket when it finds none
    try:
        import docker

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
        from testcontainers.kafka import KafkaContainer

        return KafkaContainer().with_kraft().start()
    except Exception:  # no engine, or no docker module: use the local broker
        return None


@pytest.fixture(scope="session")
def broker() -> Iterator[tuple[str, LocalKafka | None]]:
    """(bootstrap servers, the local broker when this session started one)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, None
        return
    container = _docker_kafka()
    if container is not None:
        yield container.get_bootstrap_server(), None
        container.stop()
        return
    with LocalKafka() as kafka:
        yield kafka.bootstrap_servers, kafka


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: tuple[str, LocalKafka | None]) -> str:
    """Bootstrap servers of the broker the integration tests use."""
    return broker[0]


@pytest.fixture(scope="session")
def local_kafka(broker: tuple[str, LocalKafka | None]) -> LocalKafka | None:
    """The local broker this session started, or None when another one is used."""
    return broker[1]


@pytest.fixture
def restartable_kafka(local_kafka: LocalKafka | None) -> LocalKafka:
    """The local broker itself, for tests that stop and start it."""
    if local_kafka is None:
        pytest.skip("broker restarts need the local broker, not $KAFKA_BOOTSTRAP_SERVERS")
    return local_kafka


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> NewTopic:
    """A factory of fresh, uniquely named topics."""

    async def make(partitions: int = 1, **configs: str) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([TopicSpec(name, partitions, 1, topic_configs=configs)])

            async def described() -> bool:  # metadata reaches the broker after CreateTopics
                [topic] = await admin.describe_topics([name])
                return len(topic["partitions"]) == partitions

            await wait_for(described, deadline_s=30, what=f"topic {name} in the metadata")
        finally:
            await admin.close()
        return name

    return make
