"""`detector config`: the effective configuration, with derived values and where each
value came from; secrets show only whether they are set (detector.commands.effective)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from detector.cli import main
from detector.commands import effective
from detector.config import load_settings


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "detector.yaml"
    path.write_text("name: mine\nkafka: {group_id: from-file}\n"
                    "embedding: {backend: dashscope, model: text-embedding-v4, dimension: 1024}\n")
    return path


class TestSources:
    def test_each_value_says_whether_it_came_from_file_env_or_default(
            self, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """a key in the file is `file`, a DETECTOR_* variable wins as `env`, the rest
        is `default`."""
        monkeypatch.setenv("DETECTOR_KAFKA__CLIENT_ID", "from-env")
        settings = load_settings(config)
        shown = {v.key: v for v in effective.values(settings, config)}
        assert shown["name"].value == "mine"
        assert shown["name"].source == f"file {config}"
        assert shown["kafka.client_id"].value == "from-env"
        assert shown["kafka.client_id"].source == "env DETECTOR_KAFKA__CLIENT_ID"
        assert shown["input.topic"].source == "default"

    def test_derived_values_are_filled_in(self, config: Path) -> None:
        """rebalance timeout, reorder window, transactional id, replica id and
        min.insync.replicas appear as the detector derives them."""
        settings = load_settings(config, kafka={"group_instance_id": "detector-0"},
                                 shutdown_timeout_s=40)
        shown = {v.key: v for v in effective.values(settings, config, environ={})}
        assert shown["kafka.rebalance_timeout_ms"].value == 50_000
        assert shown["embedding.reorder_window"].value == 64
        assert shown["kafka.transactional_id"].value == "mine-detector-0"
        assert shown["state.replica_id"].value == "detector-0"
        assert shown["kafka.topic_min_insync_replicas"].value == 1
        assert all(shown[k].source.startswith("derived") for k in (
            "kafka.rebalance_timeout_ms", "embedding.reorder_window", "state.replica_id"))

    def test_a_provider_key_shows_as_set_never_its_value(
            self, config: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """DASHSCOPE_API_KEY is reported as set, with its variable; the value is masked."""
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret-value")
        assert main(["config", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "sk-secret-value" not in out
        assert "api_key: '**********'  # set (env DASHSCOPE_API_KEY)" in out

    def test_a_missing_key_is_visible(self, config: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """a remote backend without any key says so."""
        monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
        monkeypatch.delenv("DETECTOR_EMBEDDING__API_KEY", raising=False)
        shown = {v.key: v for v in effective.values(load_settings(config), config)}
        assert shown["embedding.api_key"].value is None
        assert shown["embedding.api_key"].source.startswith("NOT SET")


class TestOutput:
    def test_yaml_is_the_default_and_loads_back(
            self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """the YAML output parses to the same values (sources are comments)."""
        assert main(["config", "-c", str(config)]) == 0
        body = yaml.safe_load(capsys.readouterr().out)
        assert body["name"] == "mine"
        assert body["kafka"]["group_id"] == "from-file"
        assert body["embedding"]["dimension"] == 1024

    def test_json_has_settings_and_sources(
            self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--json: {settings, sources}, one source per dotted key."""
        assert main(["config", "--json", "-c", str(config)]) == 0
        body = orjson.loads(capsys.readouterr().out)
        assert body["settings"]["kafka"]["group_id"] == "from-file"
        assert body["sources"]["kafka.group_id"] == f"file {config}"
        assert set(body["sources"]) >= {"name", "kafka.bootstrap_servers", "log.format"}
