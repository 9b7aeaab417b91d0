"""The published JSON Schemas are the settings model's: config/detector.schema.json and
the `config` part of the chart's values.schema.json (`make schema` regenerates both)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from detector.config import Settings
from devtools import schema

ROOT = Path(__file__).resolve().parents[1]


def test_generated_schemas_match_the_settings_model() -> None:
    """both files equal what the settings model generates now; a settings key added or
    changed without `make schema` fails here."""
    assert schema.stale(ROOT) == [], "run `make schema`"


def test_every_settings_key_is_in_both_schemas() -> None:
    """each section's fields appear in the detector.yaml schema and the chart's."""
    config = orjson.loads((ROOT / schema.CONFIG_SCHEMA).read_bytes())
    values = orjson.loads((ROOT / schema.VALUES_SCHEMA).read_bytes())
    assert set(config["properties"]) == set(Settings.model_fields)
    assert set(values["properties"]["config"]["properties"]) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and hasattr(section, "model_fields"):
            title = section.__name__
            assert set(config["$defs"][title]["properties"]) == set(section.model_fields)
            chart = values["definitions"][schema.PREFIX + title]["properties"]
            assert set(chart) == set(section.model_fields), name


def test_stale_files_are_detected(tmp_path: Path) -> None:
    """the drift check really compares: an edited copy is reported stale."""
    for path in (schema.CONFIG_SCHEMA, schema.VALUES_SCHEMA):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes((ROOT / path).read_bytes())
    assert schema.stale(tmp_path) == []
    body = orjson.loads((tmp_path / schema.CONFIG_SCHEMA).read_bytes())
    del body["$defs"]["KafkaSettings"]["properties"]["group_id"]
    (tmp_path / schema.CONFIG_SCHEMA).write_bytes(orjson.dumps(body))
    assert schema.stale(tmp_path) == [schema.CONFIG_SCHEMA]


class TestDetectorYamlSchema:
    SCHEMA = orjson.loads((ROOT / schema.CONFIG_SCHEMA).read_bytes())

    def test_shipped_config_validates(self) -> None:
        """config/detector.yaml (which names the schema on its first line) is valid."""
        text = (ROOT / "config/detector.yaml").read_text()
        assert text.startswith("# yaml-language-server: $schema=detector.schema.json")
        jsonschema.validate(yaml.safe_load(text), self.SCHEMA)

    @pytest.mark.parametrize("bad", [
        {"kafka": {"bootstrap_server": "x"}},
        {"embedding": {"batch_size": 0}},
        {"log": {"format": "xml"}},
        {"scoring": {"threshold": "high"}},
        {"unknown": 1},
    ])
    def test_typos_and_wrong_values_are_refused(self, bad: dict[str, object]) -> None:
        """unknown keys, out-of-range numbers, wrong enums and types fail validation."""
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, self.SCHEMA)
