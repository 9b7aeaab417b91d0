"""Kafka security from configuration, against a local broker with a SASL listener:
SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN work with the right credentials; wrong ones give
a clear error after a bounded back-off, not a hot loop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from structlog.testing import capture_logs

from detector import app
from detector.config import Settings
from detector.devkafka import LocalKafka
from detector.embedders.local import LocalEmbedder
from detector.errors import KafkaUnavailableError
from detector.kafka import connection_kwargs
from tests.helpers import (
    RecordingEmbedder,
    detector_settings,
    metric,
    running_detector,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka
USER, PASSWORD = "alice", "alice-secret-9"


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[LocalKafka]:
    with LocalKafka(scram_users={USER: PASSWORD}) as kafka:
        yield kafka


def sasl_settings(broker: LocalKafka, topic: str, mechanism: str, password: str,
                  **more: object) -> Settings:
    return detector_settings(broker.bootstrap_servers, topic, kafka={
        "bootstrap_servers": broker.sasl_bootstrap_servers,
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
        "sasl_username": USER, "sasl_password": password, **more})


async def make_topic(broker: LocalKafka) -> str:
    name = unique("sec")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    return name


class TestSasl:
    @pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
    async def test_right_credentials_work(
        self, sasl_broker: LocalKafka, local_embedder: LocalEmbedder, mechanism: str
    ) -> None:
        """the detector consumes and alerts over SASL with each mechanism."""
        topic = await make_topic(sasl_broker)
        settings = sasl_settings(sasl_broker, topic, mechanism, PASSWORD)
        producer = AIOKafkaProducer(**connection_kwargs(settings.kafka))
        await producer.start()
        await producer.send_and_wait(topic, orjson.dumps({"text": "asdfghjkl zxcvbnm"}))
        await producer.stop()
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_alerts_total") == 1,
                           what="an alert over SASL")

    async def test_wrong_password_is_a_clear_error_after_bounded_backoff(
        self, sasl_broker: LocalKafka, local_embedder: LocalEmbedder
    ) -> None:
        """wrong credentials: a few spaced attempts, then an error naming the cause."""
        topic = await make_topic(sasl_broker)
        settings = sasl_settings(sasl_broker, topic, "SCRAM-SHA-256", "wrong-password",
                                 connect_deadline_s=6)
        started = time.monotonic()
        with capture_logs() as logs, pytest.raises(KafkaUnavailableError) as info:
            await app.run(settings, embedder=RecordingEmbedder(local_embedder))
        elapsed = time.monotonic() - started
        assert "authentication failed" in str(info.value)
        assert "wrong-password" not in str(info.value) + repr(logs)
        retries = [e for e in logs if e["event"] == "kafka not reachable, retrying"]
        assert 2 <= len(retries) <= 4, "backs off 1, 2, 4 s: no hot loop"
        assert 3 <= elapsed <= 20
