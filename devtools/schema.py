"""JSON Schemas generated from the settings model: `make schema` (python -m devtools.schema).

Writes two files from `Settings.model_json_schema()`:

* ``config/detector.schema.json``: the schema of detector.yaml (editors validate and
  complete the file with it; its first line names it for the YAML language server);
* the ``config`` part of ``helm/detector/values.schema.json``: the same schema under the
  chart's own keys, with the secrets forbidden (they come from existing Secrets) and the
  sections every deployment sets required. The rest of the chart's schema is left as it is.

``--check`` writes nothing and exits 1 when either file differs from what the settings
model generates (tests/test_schema.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import orjson

from detector.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = Path("config/detector.schema.json")
VALUES_SCHEMA = Path("helm/detector/values.schema.json")
PREFIX = "config."
# Secrets never go into detector.yaml through the chart: they come from existing Secrets.
CHART_SECRETS = {"embedding": ("api_key", "embedding.existingSecret"),
                 "kafka": ("sasl_password", "kafkaSasl.existingSecret")}
CHART_REQUIRED = ["kafka", "input", "embedding", "alerts"]
# `helm --set key=0.3` passes a string; the settings model (lax mode) accepts numeric
# strings, so the chart's schema does too (the daemon still checks the range).
NUMERIC_STRINGS = {"integer": r"^\s*[-+]?[0-9]+\s*$",
                   "number": r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"}


def config_schema() -> dict[str, Any]:
    """The schema of detector.yaml."""
    schema = Settings.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "detector.schema.json", **schema}


def chart_config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the chart's `config` property, the definitions it refers to)."""
    schema = Settings.model_json_schema(ref_template="#/definitions/" + PREFIX + "{model}")
    definitions = {PREFIX + name: body for name, body in schema.pop("$defs").items()}
    for section, (key, source) in CHART_SECRETS.items():
        properties = definitions[PREFIX + f"{section.capitalize()}Settings"]["properties"]
        properties[key] = {"not": {}, "description": f"secrets come from {source}"}
    schema = _numeric_strings(schema)
    definitions = {name: _numeric_strings(body) for name, body in definitions.items()}
    schema["required"] = CHART_REQUIRED
    schema["description"] = ("detector.yaml (generated from the settings model by "
                             "`make schema`; do not edit by hand)")
    return schema, definitions


def _numeric_strings(node: Any) -> Any:
    """A copy of `node` where every integer or number schema also accepts a numeric string."""
    if isinstance(node, list):
        return [_numeric_strings(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _numeric_strings(value) for key, value in node.items()}
    kind = out.get("type")
    if kind in NUMERIC_STRINGS:
        keep = ("title", "description", "default")
        number = {k: v for k, v in out.items() if k not in keep}
        text = {"type": "string", "pattern": NUMERIC_STRINGS[kind]}
        return {**{k: v for k, v in out.items() if k in keep}, "anyOf": [number, text]}
    return out


def values_schema(current: dict[str, Any]) -> dict[str, Any]:
    """The chart's values schema with its `config` part regenerated."""
    out = copy.deepcopy(current)
    config, definitions = chart_config_schema()
    out["properties"]["config"] = config
    kept = {k: v for k, v in out.get("definitions", {}).items() if not k.startswith(PREFIX)}
    out["definitions"] = {**kept, **dict(sorted(definitions.items()))}
    return out


def render(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def expected(root: Path = ROOT) -> dict[Path, bytes]:
    """Every generated file's path (relative to `root`) and its content."""
    current = orjson.loads((root / VALUES_SCHEMA).read_bytes())
    return {CONFIG_SCHEMA: render(config_schema()), VALUES_SCHEMA: render(values_schema(current))}


def stale(root: Path = ROOT) -> list[Path]:
    """Generated files that differ from the settings model's schema."""
    return [path for path, body in expected(root).items()
            if not (root / path).is_file() or (root / path).read_bytes() != body]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a generated file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            sys.stderr.write(f"{path} is out of date: run `make schema`\n")
        return 1 if out_of_date else 0
    for path, body in expected().items():
        (ROOT / path).write_bytes(body)
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
