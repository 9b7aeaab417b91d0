"""`detector calibrate` end to end with the real local model."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from detector.calibration.artifact import Result, load_artifact
from detector.calibration.artifact import calibrate as calibrate_rows
from detector.calibration.keys import calibrate_keys
from detector.calibration.report import write_report
from detector.cli import main
from detector.commands.calibrate import CalibrateOptions, run_calibration, summary_table
from detector.config import load_settings
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from detector.model.reservoir import Ref
from detector.operating import startup
from devtools.sample_data import GARBLED, OFF_TOPIC, SPAM, stream
from tests.helpers import NewTopic, drug_comments


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
        assert artifact.counts.anomalies == len(SPAM + GARBLED + OFF_TOPIC)
        assert artifact.metrics.holdout_fpr is not None
        assert artifact.metrics.holdout_fpr <= 0.01
        assert {p.name for p in (tmp_path / "report").iterdir()} == {
            "report.json", "report.md", "similarity_hist.png", "roc.png"}
        assert await asyncio.to_thread(calibrate, tmp_path, *args) == 0
        assert "embedding calls  0" in capsys.readouterr().out

        settings = load_settings("config/detector.yaml", scoring={"calibration_file": str(out)})
        state = await startup.initial_state(settings, local_embedder)
        assert state.threshold == artifact.threshold
        assert state.centroid.weight == artifact.counts.train

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
            await startup.initial_state(settings, local_embedder)

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

    def test_unreadable_file_and_skipped_lines(
        self, tmp_path: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """a missing file is a one-line error naming it; bad lines are skipped and counted."""
        assert calibrate(tmp_path, "--normal", str(tmp_path / "missing.jsonl")) == 2
        assert "cannot read samples file" in capsys.readouterr().err
        mixed = tmp_path / "mixed.jsonl"
        mixed.write_bytes(inputs[0].read_bytes() + b'not json\n{"other": 1}\n{"text": " "}\n')
        assert calibrate(tmp_path, "--normal", str(mixed), "--out", str(tmp_path / "m.json"),
                         "--target-fpr", "0.05") == 0
        assert f"skipped 3 unusable lines of {mixed}" in capsys.readouterr().err

    def test_from_without_topic_is_refused(self, tmp_path: Path, inputs: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """--from with --normal is a usage error, not silently ignored."""
        assert calibrate(tmp_path, "--normal", str(inputs[0]), "--from", "2026-01-01") == 2
        assert "--from and --to need --topic" in capsys.readouterr().err


class TestExemplarSources:
    async def test_exemplars_of_a_file_carry_the_lines_ids(
        self, tmp_path: Path, local_embedder: LocalEmbedder
    ) -> None:
        """exemplars calibrated from a file keep each line's id (input.id_field) next to
        the file name and line, as exemplars read from a topic do; a line without an id
        gives a null id."""
        normal = tmp_path / "normal.jsonl"
        lines: list[dict[str, object]] = [{"id": f"c-{i}", "text": c.text}
                                          for i, c in enumerate(stream(300, anomaly_rate=0.0,
                                                                       seed=5))]
        lines += [{"id": 7, "text": "An ordinary comment whose id is a number."},
                  {"text": "An ordinary comment without any id at all."}]
        normal.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        settings = load_settings("config/detector.yaml")
        opts = CalibrateOptions(normal=normal, target_fpr=0.05, bootstrap=20,
                                out=tmp_path / "cal.json", cache_dir=tmp_path / "cache")
        result, _ = await run_calibration(settings, opts, embedder=local_embedder)
        refs = [e.ref for e in result.artifact.exemplars]
        assert len(refs) == result.artifact.counts.train  # < reservoir_size: all kept
        for ref in refs:
            line = lines[ref.offset]
            assert (ref.topic, ref.partition) == ("file:normal.jsonl", -1)
            assert ref.id == (str(line["id"]) if "id" in line else None)
        assert sum(ref.id is not None for ref in refs) >= len(refs) - 1


def iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


async def group_ids(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {group[0] for group in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def produce_at(bootstrap: str, topic: str, values: list[bytes], timestamp_ms: int,
                     *, transactional: bool = False) -> None:
    """Send `values` with one explicit record timestamp, optionally in one transaction."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
        transactional_id=f"calibrate-test-{uuid.uuid4().hex}" if transactional else None)
    await producer.start()
    try:
        if transactional:
            async with producer.transaction():
                for value in values:
                    await producer.send(topic, value, timestamp_ms=timestamp_ms)
        else:
            await asyncio.gather(*[await producer.send(topic, value, timestamp_ms=timestamp_ms)
                                   for value in values])
    finally:
        await producer.stop()


@pytest.mark.kafka
class TestCalibrateFromTopic:
    async def test_reads_only_the_time_range_without_a_group(
        self, tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopic,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """--topic --from [--to] calibrates on exactly the records of that time range (bad
        ones skipped and counted, a trailing transaction marker passed), with no group."""
        monkeypatch.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
        topic = await new_topic(partitions=2)
        hour = 3_600_000
        now = int(time.time() * 1000)
        await produce_at(kafka_bootstrap, topic, [orjson.dumps({"text": t}) for t in SPAM],
                         now - 2 * hour)
        in_range = [orjson.dumps({"text": c.text})
                    for c in stream(400, anomaly_rate=0.0, seed=8)]
        await produce_at(kafka_bootstrap, topic, [*in_range, b"not json", b"{}", b"{"],
                         now - hour, transactional=True)
        groups_before = await group_ids(kafka_bootstrap)

        def calibrate_topic(*bounds: str) -> tuple[int, str]:
            code = main(["--config", "config/detector.yaml", "calibrate", "--topic", topic,
                         "--from", iso(now - hour - 60_000), *bounds, "--target-fpr", "0.05",
                         "--bootstrap", "100", "--cache-dir", str(tmp_path / "cache"),
                         "--out", str(tmp_path / "t.json")])
            return code, capsys.readouterr().err

        # the range ends at the end offsets, just after the transaction's commit marker
        code, err = await asyncio.wait_for(asyncio.to_thread(calibrate_topic), 60)
        assert code == 0, err
        assert f"skipped 3 unusable records of {topic}" in err
        artifact = load_artifact(tmp_path / "t.json")
        assert artifact.counts.train + artifact.counts.holdout == 400

        await produce_at(kafka_bootstrap, topic, [orjson.dumps({"text": t}) for t in GARBLED],
                         now)
        code, err = await asyncio.to_thread(calibrate_topic, "--to", iso(now - hour // 2))
        assert code == 0, err
        artifact = load_artifact(tmp_path / "t.json")
        assert artifact.counts.train + artifact.counts.holdout == 400
        assert await group_ids(kafka_bootstrap) == groups_before


class TestPerKeyCalibration:
    async def test_keys_get_own_or_pooled_thresholds_for_the_configured_method(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], local_embedder: LocalEmbedder,
    ) -> None:
        """With scoring.key_field and method knn the artifact holds a baseline per key, an
        own threshold where the key's held-out normals support one at
        scoring.key_threshold_confidence, the pooled one otherwise, exemplars and each
        key's reference sample; the summary lists every key; the daemon loads it only
        with the same method."""
        normal = tmp_path / "normal.jsonl"
        lines = [{"text": c.text, "meta": {"channel": "shop"}}
                 for c in stream(3000, anomaly_rate=0.0, seed=23)]
        lines += [{"text": t, "meta": {"channel": "pharmacy"}} for t in drug_comments(200, 3)]
        normal.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        monkeypatch.setenv("DETECTOR_SCORING__KEY_FIELD", "meta.channel")
        monkeypatch.setenv("DETECTOR_SCORING__METHOD", "knn")
        out = tmp_path / "cal.json"
        assert await asyncio.to_thread(calibrate, tmp_path, "--normal", str(normal),
                                       "--out", str(out)) == 0
        summary = capsys.readouterr().out
        assert "per-key baselines  2 keys of meta.channel (1 with their own threshold" in \
            summary
        artifact = load_artifact(out)
        for key, origin in (("pharmacy", "pooled"), ("shop", "own")):
            held = artifact.keys.baselines[key].counts.holdout if artifact.keys else -1
            assert re.search(rf"\n{key} +{held} +{origin} +[0-9.]+ +[0-9.]+% \(90 % "
                             r"interval", summary)
        assert artifact.schema_ == "detector.calibration/v2"
        assert artifact.scoring.method == "knn"
        assert len(artifact.exemplars) == 2000  # scoring.reservoir_size < training normals
        assert artifact.keys is not None
        baselines = artifact.keys.baselines
        assert baselines["shop"].threshold is not None
        assert baselines["pharmacy"].threshold is None
        assert artifact.keys.pooled_threshold is not None
        assert len(baselines["pharmacy"].exemplars) == 100  # key_reservoir_size
        assert (baselines["shop"].threshold_origin,
                baselines["pharmacy"].threshold_origin) == ("own", "pooled")
        shop_fpr = baselines["shop"].threshold_fpr
        assert shop_fpr is not None
        assert (shop_fpr.holdout, shop_fpr.confidence) == (
            baselines["shop"].counts.holdout, 0.9)
        reference = baselines["pharmacy"].reference_rows(artifact.model.dimension)
        assert reference is not None
        assert len(reference) == baselines["pharmacy"].counts.holdout
        glob = artifact.reference_rows(artifact.model.dimension)
        assert glob is not None
        # all held-out normals: fewer than --reference-size
        assert len(glob) == artifact.counts.holdout

        knn = load_settings("config/detector.yaml", scoring={
            "calibration_file": str(out), "method": "knn", "key_field": "meta.channel"})
        state = await startup.initial_state(knn, local_embedder)
        built = state.baselines(knn, "r")
        assert set(built.bases) == {"shop", "pharmacy"}
        assert len(built.global_.reservoir) == len(artifact.exemplars)
        monkeypatch.delenv("DETECTOR_SCORING__METHOD")
        centroid = load_settings("config/detector.yaml", scoring={
            "calibration_file": str(out), "key_field": "meta.channel"})
        with pytest.raises(ConfigError, match=r"scoring\.method"):
            await startup.initial_state(centroid, local_embedder)


class TestSummary:
    def test_summary_and_report_list_keys_and_intervals(self, tmp_path: Path) -> None:
        """The summary and report.md show the global threshold's expected FPR with its
        90 % interval, and per key: held-out count, own or pooled, the threshold applied
        and its expected FPR range."""
        rng = np.random.default_rng(0)
        rows = np.ones((3000, 8)) + 0.3 * rng.normal(size=(3000, 8))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        keys = ["big" if i % 10 else "few" for i in range(3000)]
        train, hold = np.arange(1000), np.arange(1000, 3000)
        made = calibrate_rows(rows[train], rows[hold], None, model="m", dimension=8,
                              bootstrap=20)
        per_key = calibrate_keys(rows[train], [keys[i] for i in train],
                                 [Ref("t", 0, int(i)) for i in train], rows[hold],
                                 [keys[i] for i in hold], target_fpr=0.01, min_train=10)
        result = Result(made.artifact.with_baselines([], per_key.to_json(
            "shop", 10, keep_text=False)), made.holdout_sims, made.anomaly_sims)
        assert per_key.pooled is not None
        table = summary_table(result, tmp_path / "c.json", 0)
        promised = result.artifact.metrics.threshold_fpr
        assert promised is not None
        low, high = promised.fpr_interval
        assert (f"expected FPR       {promised.expected_fpr:.2%} (90 % interval {low:.2%} "
                f".. {high:.2%}); rank {promised.rank} of 2000 held-out normals at "
                f"confidence 0.5") in table
        assert "reference          2000 held-out normals" in table
        assert re.search(r"\nkey +held-out +threshold from +threshold +expected FPR\n", table)
        assert re.search(rf"\nbig +1800 +own +{per_key.thresholds['big']:.4f} +"
                         r"[0-9.]+% \(90 % interval [0-9.]+% \.\. [0-9.]+%\)", table)
        assert re.search(rf"\nfew +200 +pooled +{per_key.pooled:.4f} +"
                         r"[0-9.]+% \(90 % interval", table)
        md = write_report(result, tmp_path / "report")[1].read_text()
        assert "- expected false-positive rate of the threshold: " in md
        assert "## Per-key thresholds (`shop`)" in md
        assert re.search(r"\| few \| 200 \| pooled \| [0-9.]+ \| [0-9.]+% \(90 %", md)
        assert re.search(r"\| big \| 1800 \| own \| [0-9.]+ \| [0-9.]+% \(90 %", md)
