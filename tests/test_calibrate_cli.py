"""`detector calibrate` end to end with the real local model."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from detector import app
from detector.calibration import load_artifact
from detector.cli import main
from detector.config import load_settings
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from detector.sample_data import GARBLED, OFF_TOPIC, SPAM, stream
from tests.helpers import produce

NewTopic = Callable[..., Awaitable[str]]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cal")
    normal, anomalies = d / "normal.jsonl", d / "anomalies.jsonl"
    normal.write_bytes(b"".join(orjson.dumps({"text": c.text}) + b"\n"
                                for c in stream(1200, anomaly_rate=0.0, seed=21)))
    anomalies.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n"
                                   for t in SPAM + GARBLED + OFF_TOPIC))
    return normal, anomalies


def calibrate(tmp_path: Path, *args: str) -> int:
    return main(["--config", "config/detector.yaml", "calibrate", "--bootstrap", "200",
                 "--cache-dir", str(tmp_path / "cache"), *args])


class TestCalibrateCommand:
    async def test_artifact_report_and_cache(
        self, tmp_path: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
        local_embedder: LocalEmbedder,
    ) -> None:
        """writes an artifact detector run accepts, a report with plots, and re-runs from
        the cache without embedding calls."""
        normal, anomalies = inputs
        out = tmp_path / "cal.json"
        args = ["--normal", str(normal), "--anomalies", str(anomalies), "--out", str(out),
                "--report-dir", str(tmp_path / "report")]
        assert await asyncio.to_thread(calibrate, tmp_path, *args) == 0
        first = capsys.readouterr().out
        assert "ROC AUC" in first
        assert "embedding calls  0" not in first
        artifact = load_artifact(out)
        assert artifact.counts["anomalies"] == len(SPAM + GARBLED + OFF_TOPIC)
        assert artifact.metrics["holdout_fpr"] <= 0.01
        assert {p.name for p in (tmp_path / "report").iterdir()} == {
            "report.json", "report.md", "similarity_hist.png", "roc.png"}
        assert await asyncio.to_thread(calibrate, tmp_path, *args) == 0
        assert "embedding calls  0" in capsys.readouterr().out

        settings = load_settings("config/detector.yaml", scoring={"calibration_file": str(out)})
        state = await app.initial_state(settings, local_embedder)
        assert state.threshold == artifact.threshold
        assert state.centroid.weight == artifact.counts["train"]

    async def test_daemon_refuses_an_artifact_of_another_model(
        self, tmp_path: Path, local_embedder: LocalEmbedder
    ) -> None:
        """an artifact made with another model or dimension stops the start."""
        path = tmp_path / "other.json"
        body = {"schema": "detector.calibration/v1",
                "centroid": {"dimension": 2, "sum": [1.0, 0.0], "weight": 1.0, "version": 0,
                             "decay": 1.0},
                "threshold": 0.3, "method": "target_fpr", "target": 0.01,
                "model": {"name": "text-embedding-v4", "dimension": 2},
                "counts": {"train": 1, "holdout": 1, "anomalies": 0}, "metrics": {},
                "created_at": "2026-01-01T00:00:00+00:00"}
        path.write_bytes(orjson.dumps(body))
        settings = load_settings("config/detector.yaml", scoring={"calibration_file": str(path)})
        with pytest.raises(ConfigError, match="text-embedding-v4"):
            await app.initial_state(settings, local_embedder)

    @pytest.mark.parametrize("content", [b"", b"not json\n\n"])
    def test_bad_input_is_a_one_line_error(self, tmp_path: Path, content: bytes) -> None:
        """an empty or unusable file exits 2 with a message and no traceback."""
        empty = tmp_path / "empty.jsonl"
        empty.write_bytes(content)
        result = subprocess.run(
            [sys.executable, "-m", "detector.cli", "calibrate", "--normal", str(empty),
             "--out", str(tmp_path / "x.json"), "--cache-dir", str(tmp_path / "c")],
            capture_output=True, text=True, check=False)
        assert result.returncode == 2
        assert "no normal comments" in result.stderr
        assert "Traceback" not in result.stderr

    def test_too_few_samples_for_the_target(self, tmp_path: Path, inputs: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
        """a target FPR the sample size cannot support is refused with the number needed."""
        assert calibrate(tmp_path, "--normal", str(inputs[0]), "--target-fpr", "0.001",
                         "--out", str(tmp_path / "x.json")) == 2
        assert "need at least 3000" in capsys.readouterr().err


@pytest.mark.kafka
class TestCalibrateFromTopic:
    async def test_reads_a_time_range_without_a_group(
        self, tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopic,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """--topic calibrates from the topic's records (no consumer group is created)."""
        monkeypatch.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
        topic = await new_topic(partitions=2)
        await produce(kafka_bootstrap, topic, [
            (None, orjson.dumps({"text": c.text}))
            for c in stream(400, anomaly_rate=0.0, seed=8)])
        code = await asyncio.to_thread(
            main, ["--config", "config/detector.yaml", "calibrate", "--topic", topic,
                   "--target-fpr", "0.05", "--bootstrap", "100",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "t.json")])
        assert code == 0, capsys.readouterr().err
        artifact = load_artifact(tmp_path / "t.json")
        assert artifact.counts["train"] + artifact.counts["holdout"] == 400
