"""Kafka security from configuration, against a local broker with SASL_PLAINTEXT, SSL
(client certificates required) and SASL_SSL listeners: SCRAM-SHA-256, SCRAM-SHA-512 and
PLAIN work with the right credentials, mutual TLS with the right certificates; wrong
credentials, an untrusted broker certificate or a missing client certificate give a
clear error after a bounded back-off, not a hot loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from structlog.testing import capture_logs

from detector.commands import run as app
from detector.config import Settings
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError, KafkaUnavailableError
from detector.io.kafka import connection_kwargs
from devtools.broker import BrokerTls, LocalKafka
from tests.helpers import (
    RecordingEmbedder,
    detector_settings,
    metric,
    running_detector,
    unique,
    wait_for,
)
from tests.tls import Certs, make_certs

pytestmark = pytest.mark.kafka
USER, PASSWORD = "alice", "alice-secret-9"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def sasl_broker(certs: Certs) -> Iterator[LocalKafka]:
    tls = BrokerTls(cafile=certs.ca, certfile=certs.server_cert, keyfile=certs.server_key)
    with LocalKafka(scram_users={USER: PASSWORD}, tls=tls) as kafka:
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
        await alert_over(settings, local_embedder, "an alert over SASL")

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


def tls_settings(broker: LocalKafka, topic: str, **kafka: object) -> Settings:
    return detector_settings(broker.bootstrap_servers, topic, kafka={
        "bootstrap_servers": broker.ssl_bootstrap_servers, "security_protocol": "SSL",
        **kafka})


async def alert_over(settings: Settings, embedder: LocalEmbedder, what: str) -> None:
    """Produce one anomalous comment with the settings' own security and see it alerted."""
    producer = AIOKafkaProducer(**connection_kwargs(settings.kafka))
    await producer.start()
    try:
        await producer.send_and_wait(settings.input.topic,
                                     orjson.dumps({"text": "asdfghjkl zxcvbnm"}))
    finally:
        await producer.stop()
    async with running_detector(settings, RecordingEmbedder(embedder)) as det:
        await wait_for(lambda: metric(det.metrics, "detector_alerts_total") == 1, what=what)


async def refused(settings: Settings, embedder: LocalEmbedder) -> tuple[str, float]:
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(KafkaUnavailableError) as info:
        await app.run(settings, embedder=RecordingEmbedder(embedder))
    retries = [e for e in logs if e["event"] == "kafka not reachable, retrying"]
    assert len(retries) <= 4, "backs off 1, 2, 4 s: no hot loop"
    return str(info.value), time.monotonic() - started


class TestTls:
    async def test_mutual_tls_works(self, sasl_broker: LocalKafka, certs: Certs,
                                    local_embedder: LocalEmbedder) -> None:
        """SSL with the CA bundle and a client certificate: consumed and alerted."""
        topic = await make_topic(sasl_broker)
        settings = tls_settings(sasl_broker, topic, ssl_cafile=certs.ca,
                                ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key)
        await alert_over(settings, local_embedder, "an alert over mutual TLS")

    @pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
    async def test_sasl_ssl_works(self, sasl_broker: LocalKafka, certs: Certs,
                                  local_embedder: LocalEmbedder, mechanism: str) -> None:
        """SASL_SSL: SCRAM over TLS, server verified against the CA bundle."""
        topic = await make_topic(sasl_broker)
        settings = sasl_settings(sasl_broker, topic, mechanism, PASSWORD,
                                 bootstrap_servers=sasl_broker.sasl_ssl_bootstrap_servers,
                                 security_protocol="SASL_SSL", ssl_cafile=certs.ca)
        await alert_over(settings, local_embedder, f"an alert over SASL_SSL {mechanism}")

    async def test_untrusted_broker_certificate_is_a_clear_error(
        self, sasl_broker: LocalKafka, certs: Certs, local_embedder: LocalEmbedder
    ) -> None:
        """a CA bundle that did not sign the broker's certificate: verification fails and
        the error says so (verification is on by default)."""
        topic = await make_topic(sasl_broker)
        settings = tls_settings(sasl_broker, topic, ssl_cafile=certs.other_ca,
                                ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key,
                                connect_deadline_s=3)
        message, elapsed = await refused(settings, local_embedder)
        assert "broker's certificate is not trusted" in message
        assert "CERTIFICATE_VERIFY_FAILED" in message
        assert elapsed <= 20

    @pytest.mark.parametrize("client", ["none", "signed by another CA"])
    async def test_missing_or_foreign_client_certificate_is_a_clear_error(
        self, sasl_broker: LocalKafka, certs: Certs, local_embedder: LocalEmbedder,
        client: str,
    ) -> None:
        """the SSL listener requires a client certificate from its CA."""
        topic = await make_topic(sasl_broker)
        files = {} if client == "none" else {"ssl_certfile": certs.other_client_cert,
                                             "ssl_keyfile": certs.other_client_key}
        settings = tls_settings(sasl_broker, topic, ssl_cafile=certs.ca, connect_deadline_s=3,
                                **files)
        message, _ = await refused(settings, local_embedder)
        assert "closed the TLS connection" in message
        assert "kafka.ssl_certfile" in message

    async def test_unreadable_tls_files_are_a_config_error(
        self, sasl_broker: LocalKafka, certs: Certs, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """a missing CA file, or a key that does not belong to the certificate, is a
        one-line configuration error naming the setting, before any connection."""
        topic = await make_topic(sasl_broker)
        missing = tls_settings(sasl_broker, topic, ssl_cafile=tmp_path / "nope.pem")
        with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile .*nope\.pem"):
            await app.run(missing, embedder=RecordingEmbedder(local_embedder))
        mismatched = tls_settings(sasl_broker, topic, ssl_cafile=certs.ca,
                                  ssl_certfile=certs.client_cert,
                                  ssl_keyfile=certs.other_client_key)
        with pytest.raises(ConfigError, match=r"kafka\.ssl_certfile .*client certificate"):
            await app.run(mismatched, embedder=RecordingEmbedder(local_embedder))
