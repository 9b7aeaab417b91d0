"""`detector check` against the real broker: a good configuration passes every check, a
broken one fails with one line per problem and exit 7 (detector.commands.check)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
import yaml

from detector.cli import main
from detector.commands import check
from detector.config import load_settings
from detector.exits import EXIT_CHECK_FAILED, EXIT_OK
from tests.helpers import unique


async def create(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()


def write(path: Path, body: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


class TestOffline:
    def test_missing_files_fail_without_a_broker(self, tmp_path: Path) -> None:
        """a calibration artifact and seed file that do not exist are named."""
        settings = load_settings(None, scoring={"calibration_file": str(tmp_path / "a.json"),
                                                "seed_file": str(tmp_path / "s.jsonl")})
        results = {r.name: r for r in check.file_checks(settings)}
        assert results["calibration artifact"].outcome == "FAIL"
        assert "a.json" in results["calibration artifact"].detail
        assert results["seed file"].outcome == "ok"  # not needed beside an artifact

    def test_a_missing_api_key_fails(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """a remote backend without a key fails the key check."""
        monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
        monkeypatch.delenv("DETECTOR_EMBEDDING__API_KEY", raising=False)
        settings = load_settings(None, embedding={"backend": "dashscope",
                                                  "model": "text-embedding-v4",
                                                  "dimension": 1024})
        result = check.api_key_check(settings)
        assert result is not None
        assert result.outcome == "FAIL"
        assert "DASHSCOPE_API_KEY" in result.detail

    def test_unreadable_tls_files_fail(self, tmp_path: Path) -> None:
        """a CA file that is not a certificate is reported, naming the setting."""
        bad = tmp_path / "ca.pem"
        bad.write_text("not a certificate")
        settings = load_settings(None, kafka={"security_protocol": "SSL",
                                              "ssl_cafile": str(bad)})
        [tls] = [r for r in check.file_checks(settings) if r.name == "kafka TLS files"]
        assert tls.outcome == "FAIL"
        assert "kafka.ssl_cafile" in tls.detail


@pytest.mark.kafka
class TestOnTheBroker:
    def test_a_good_configuration_passes(self, kafka_bootstrap: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
        """brokers, input topic, group and creatable output topics: all ok, exit 0."""
        topic = unique("check-in")
        asyncio.run(create(kafka_bootstrap, topic))
        config = write(tmp_path / "good.yaml", {
            "kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": unique("g")},
            "input": {"topic": topic},
            "alerts": {"topic": unique("a"), "dead_letter_topic": unique("d")},
            "state": {"topic": unique("s")}})
        assert main(["check", "--offline", "-c", str(config)]) == EXIT_OK
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert any(line.startswith("ok    kafka brokers") for line in lines)
        assert f"ok    input topic: {topic}: 2 partitions" in lines
        assert any(line.startswith("ok    consumer group") for line in lines)
        assert any(line.startswith("ok    output topics") and "may be created" in line
                   for line in lines)
        assert "skip  embedding call: --offline" in lines
        assert not any(line.startswith("FAIL") for line in lines)

    def test_a_broken_configuration_fails_each_problem(
            self, kafka_bootstrap: str, tmp_path: Path) -> None:
        """a missing input topic, output topics it may not create and a missing artifact
        are each one FAIL line; the command exits 7."""
        settings = load_settings(
            None, kafka={"bootstrap_servers": kafka_bootstrap, "create_topics": False},
            input={"topic": unique("absent")},
            alerts={"topic": unique("a"), "dead_letter_topic": unique("d")},
            scoring={"calibration_file": str(tmp_path / "missing.json")})
        out = io.StringIO()
        assert check.command(settings, offline=True, timeout_s=10,
                             out=out) == EXIT_CHECK_FAILED
        failed = [line for line in out.getvalue().splitlines() if line.startswith("FAIL")]
        assert [line.split(":")[0] for line in failed] == [
            "FAIL  calibration artifact", "FAIL  input topic", "FAIL  output topics"]
        assert "kafka.create_topics is false" in failed[2]

    def test_unreachable_brokers_fail_and_skip_the_rest(self, tmp_path: Path) -> None:
        """no broker at the address: the broker check fails, the topic checks are skipped."""
        settings = load_settings(None, kafka={"bootstrap_servers": "127.0.0.1:9"})
        out = io.StringIO()
        assert check.command(settings, offline=True, timeout_s=3, out=out) == EXIT_CHECK_FAILED
        text = out.getvalue()
        assert "FAIL  kafka brokers: 127.0.0.1:9 (PLAINTEXT)" in text
        assert "skip  input topic: brokers unreachable" in text
