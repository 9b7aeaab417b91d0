"""Log lines: in JSON mode the standard library's records (aiokafka's) are JSON with the
same fields as the detector's own lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from detector.logs import StderrHandler, configure_logging
from devtools.broker import free_port

FIELDS = {"event", "level", "logger", "timestamp"}


@pytest.fixture
def json_logs() -> Iterator[None]:
    configure_logging("info", "json")
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    structlog.reset_defaults()


@pytest.mark.usefixtures("json_logs")
class TestJsonLogs:
    async def test_aiokafka_lines_are_json_with_the_same_fields(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """a real aiokafka client failing to reach a closed port logs through the
        standard library; every stderr line parses as JSON with event, level, logger and
        timestamp, aiokafka's as well as the detector's own."""
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{free_port()}",
                                    request_timeout_ms=1000)
        with pytest.raises(KafkaConnectionError):
            await admin.start()
        await admin.close()
        structlog.get_logger("detector.io.kafka").warning("kafka not reachable", attempt=1)
        try:
            1 / 0  # noqa: B018 - an exception to log with its traceback
        except ZeroDivisionError:
            logging.getLogger("aiokafka.conn").exception("failed with %s", "context")
        lines = capsys.readouterr().err.splitlines()
        records = [orjson.loads(line) for line in lines]
        assert all(set(r) >= FIELDS for r in records), lines
        loggers = {r["logger"] for r in records}
        assert "detector.io.kafka" in loggers
        assert any(name.startswith("aiokafka") and name != "aiokafka.conn"
                   for name in loggers), loggers
        [failed] = [r for r in records if r["event"] == "failed with context"]
        assert failed["level"] == "error"
        assert failed["exception"][0]["exc_type"] == "ZeroDivisionError"

    def test_reconfiguring_keeps_one_handler(self) -> None:
        """configure_logging twice leaves one stderr handler, not duplicate lines."""
        configure_logging("info", "json")
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, StderrHandler)]
        assert len(handlers) == 1
