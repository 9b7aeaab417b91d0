"""The documentation site: the generated reference pages are what their sources generate
(devtools.docs; `make docs` rewrites them), and every page in the nav exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from detector.config import Settings
from devtools import docs

ROOT = Path(__file__).resolve().parents[1]


def test_generated_pages_match_their_sources() -> None:
    """configuration, CLI and Helm values pages equal what the settings model, the parser
    and the chart's schema generate now; a key, flag or value added without `make docs`
    fails here."""
    assert docs.stale(ROOT) == [], "run `make docs`"


def test_stale_pages_are_detected(tmp_path: Path) -> None:
    """the check really compares: an edited copy is reported stale."""
    for path in (docs.CONFIG_PAGE, docs.CLI_PAGE, docs.VALUES_PAGE, docs.VALUES_SCHEMA,
                 docs.VALUES_YAML):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes((ROOT / path).read_bytes())
    assert docs.stale(tmp_path) == []
    page = tmp_path / docs.CLI_PAGE
    page.write_text(page.read_text().replace("--offline", "--off-line"))
    assert docs.stale(tmp_path) == [docs.CLI_PAGE]


def test_every_settings_key_has_a_row_with_a_description() -> None:
    """each key appears once with its environment variable and a non-empty description
    (taken from the comments beside the field in detector/config.py)."""
    page = (ROOT / docs.CONFIG_PAGE).read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines()
            if line.startswith("| `")}
    for name, field in Settings.model_fields.items():
        section = field.annotation
        keys = ([f"{name}.{key}" for key in section.model_fields]
                if isinstance(section, type) and hasattr(section, "model_fields") else [name])
        for key in keys:
            assert key in rows, key
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", rows[key])]
            assert cells[4] == f"`DETECTOR_{key.replace('.', '__').upper()}`"
            assert cells[5], f"{key} has no description: add a comment beside the field"


def test_every_nav_page_exists() -> None:
    """mkdocs.yml names only pages that exist (mkdocs build --strict checks links)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in pages(value)]
        return []

    for page in pages(config["nav"]):
        assert (ROOT / "docs" / page).is_file(), page
