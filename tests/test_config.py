"""Configuration: YAML + environment, validation messages that name the field."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from detector import config
from detector.config import Settings, load_settings
from detector.errors import ConfigError


class TestSettings:
    def test_shipped_config_is_valid(self) -> None:
        """config/detector.yaml loads and selects the local model."""
        s = load_settings("config/detector.yaml")
        assert s.embedding.backend == "local"
        assert s.embedding.batch_size == 10

    def test_environment_overrides_yaml(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """DETECTOR_SECTION__KEY beats the YAML file."""
        monkeypatch.setenv("DETECTOR_KAFKA__GROUP_ID", "from-env")
        assert load_settings("config/detector.yaml").kafka.group_id == "from-env"

    def test_invalid_value_names_the_field(self, tmp_path: Path) -> None:
        """a bad value fails at start with the dotted field name."""
        path = tmp_path / "c.yaml"
        path.write_text("embedding:\n  batch_size: 0\n")
        with pytest.raises(ConfigError, match=r"embedding\.batch_size"):
            load_settings(path)

    def test_unknown_key_is_an_error(self, tmp_path: Path) -> None:
        """a typo in a key is reported rather than ignored."""
        path = tmp_path / "c.yaml"
        path.write_text("kafka:\n  bootstrap_server: x\n")
        with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server"):
            load_settings(path)

    def test_instruct_requires_query(self) -> None:
        """instruct without text_type query is a configuration error."""
        with pytest.raises(ConfigError, match="instruct"):
            load_settings(None, embedding={"backend": "dashscope", "model": "text-embedding-v4",
                                            "dimension": 1024, "instruct": "x"})

    def test_dimension_checked_against_model(self) -> None:
        """text-embedding-v3 refuses a v4-only dimension."""
        with pytest.raises(ConfigError, match="supports dimensions"):
            load_settings(None, embedding={"backend": "dashscope", "model": "text-embedding-v3",
                                            "dimension": 2048})

    def test_missing_file_is_a_clear_error(self) -> None:
        """a --config path that does not exist is reported by name."""
        with pytest.raises(ConfigError, match=r"not found: nope\.yaml"):
            load_settings("nope.yaml")

    def test_api_key_from_provider_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """DASHSCOPE_API_KEY is used for the dashscope backend and masked in dumps."""
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret-123")
        s = load_settings(None, embedding={"backend": "dashscope", "model": "text-embedding-v4",
                                            "dimension": 1024})
        key = s.api_key()
        assert key is not None
        assert key.get_secret_value() == "sk-secret-123"
        assert "sk-secret-123" not in repr(s)
        assert "sk-secret-123" not in str(key)

    def test_sasl_needs_credentials(self) -> None:
        """SASL without username/password fails at start."""
        with pytest.raises(ConfigError, match="sasl"):
            load_settings(None, kafka={"security_protocol": "SASL_PLAINTEXT"})


class TestNoSharedState:
    def test_module_globals_are_constants(self) -> None:
        """config.py keeps no state between loads: every value it assigns at module
        level is immutable (no holder of the last YAML path, no mutable tables)."""
        tree = ast.parse(Path(config.__file__).read_text())
        names = [target.id for node in tree.body if isinstance(node, ast.Assign | ast.AnnAssign)
                 for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(target, ast.Name)]
        assert "MODEL_DIMENSIONS" in names
        immutable = (str, int, float, bool, bytes, tuple, frozenset, Path, MappingProxyType)
        mutable = {name: type(getattr(config, name)).__name__ for name in names
                   if not isinstance(getattr(config, name), immutable)}
        assert mutable == {}

    def test_the_file_belongs_to_one_load(self, tmp_path: Path) -> None:
        """a direct Settings() never sees the last file, and concurrent loads of
        different files each get their own."""
        paths = []
        for i in range(4):
            path = tmp_path / f"d{i}.yaml"
            path.write_text(f"name: detector-{i}\nkafka:\n  group_id: group-{i}\n")
            paths.append(path)
        load_settings(paths[0])
        assert Settings().name == "detector"

        def load(i: int) -> tuple[str, str]:
            settings = load_settings(paths[i % 4], log={"level": "warning"})
            return settings.name, settings.kafka.group_id

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(load, range(200)))
        assert results == [(f"detector-{i % 4}", f"group-{i % 4}") for i in range(200)]


class TestShippedConfiguration:
    def test_static_membership_is_documented_where_it_is_set(self) -> None:
        """config/detector.yaml names kafka.group_instance_id (null: each replica sets its
        own) and says what a restart without it costs; the operator guide says so too."""
        text = Path("config/detector.yaml").read_text()
        kafka = yaml.safe_load(text)["kafka"]
        assert "group_instance_id" in kafka
        assert kafka["group_instance_id"] is None
        assert "session_timeout_ms" in kafka
        assert "static membership" in text.lower()
        operations = Path("docs/guide/metrics.md").read_text()
        assert "DETECTOR_KAFKA__GROUP_INSTANCE_ID" in operations
        assert "session" in operations.split("## Probes and shutdown", 1)[1]


class TestOperatingSections:
    def test_drift_and_feedback_are_off_by_default(self) -> None:
        """the drift and feedback sections exist and start disabled."""
        settings = load_settings(None)
        assert not settings.drift.enabled
        assert not settings.feedback.enabled
        assert settings.feedback.weight > 0

    def test_drift_needs_some_window(self) -> None:
        """a drift window needs a record count, a duration, or both."""
        with pytest.raises(ConfigError, match=r"window_records and drift\.window_s"):
            load_settings(None, drift={"window_records": None, "window_s": None})
        only_time = load_settings(None, drift={"window_records": None, "window_s": 60})
        assert only_time.drift.window_s == 60
