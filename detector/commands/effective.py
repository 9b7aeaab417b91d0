"""`detector config`: the effective configuration, every value with where it came from.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, SecretStr

from detector.commands.run import replica_id, transactional_id
from detector.config import Settings

MASK = "**********"
ENV_PREFIX = "DETECTOR_"
# Where a remote backend's key is read when DETECTOR_EMBEDDING__API_KEY is not set.
PROVIDER_KEYS = {"dashscope": "DASHSCOPE_API_KEY", "openai": "OPENAI_API_KEY"}


@dataclass(frozen=True)
class Value:
    """One leaf of the configuration: its dotted key, effective value and source."""

    key: str
    value: Any
    source: str


def env_name(key: str) -> str:
    """The environment variable of a dotted settings key."""
    return ENV_PREFIX + key.replace(".", "__").upper()


def _derived(settings: Settings) -> dict[str, tuple[Any, str]]:
    """Keys whose null setting means "derive it", with the value in force and how."""
    kafka = settings.kafka
    return {
        "kafka.rebalance_timeout_ms": (
            settings.rebalance_timeout_ms(),
            "derived: shutdown_timeout_s + 10 s, at least kafka.session_timeout_ms"),
        "embedding.reorder_window": (
            settings.embedding.window, "derived: 16 x embedding.concurrency"),
        "kafka.transactional_id": (
            transactional_id(settings),
            "derived: NAME-REPLICA (used with delivery: exactly_once)"),
        "state.replica_id": (
            replica_id(settings), "derived: kafka.group_instance_id, else the host name"),
        "kafka.topic_min_insync_replicas": (
            kafka.min_insync_replicas,
            "derived: kafka.topic_replication_factor - 1, at least 1"),
    }


def _in(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def _leaves(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield prefix + name, value


def values(settings: Settings, file: Path | None,
           environ: Mapping[str, str] | None = None) -> list[Value]:
    """Every leaf of `settings` with its source: env, file, default or derived."""
    environ = os.environ if environ is None else environ
    upper = {name.upper() for name in environ}
    loaded = yaml.safe_load(file.read_text()) if file is not None else None
    from_file = loaded if isinstance(loaded, Mapping) else {}
    derived = _derived(settings)
    out = []
    for key, raw in _leaves(settings):
        if env_name(key) in upper:
            source = f"env {env_name(key)}"
        elif _in(from_file, key):
            source = f"file {file}"
        else:
            source = "default"
        out.append(Value(key, *_shown(settings, key, raw, source, derived=derived,
                                                  environ=environ)))
    return out


def _shown(settings: Settings, key: str, raw: Any, source: str, *,
           derived: Mapping[str, tuple[Any, str]], environ: Mapping[str, str]
           ) -> tuple[Any, str]:
    """(the value to show, its source) of one leaf."""
    if key == "embedding.api_key":
        return _api_key(settings, source, environ)
    if isinstance(raw, SecretStr):
        return MASK, f"set ({source})"
    if raw is None and key in derived:
        return derived[key]
    if raw is None:
        return None, f"{source} (unset)" if source == "default" else source
    return (str(raw) if isinstance(raw, Path) else raw), source


def _api_key(settings: Settings, source: str, environ: Mapping[str, str]) -> tuple[Any, str]:
    if settings.embedding.api_key is not None:
        return MASK, f"set ({source})"
    var = PROVIDER_KEYS.get(settings.embedding.backend)
    if var and environ.get(var):
        return MASK, f"set (env {var})"
    if settings.embedding.backend == "local":
        return None, "not needed (local backend)"
    return None, f"NOT SET: {env_name('embedding.api_key')} or {var}"


def _nest(leaves: list[Value]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for leaf in leaves:
        *sections, name = leaf.key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = leaf.value
    return tree


def as_json(leaves: list[Value]) -> str:
    """``{"settings": {...}, "sources": {"dotted.key": "..."}}``."""
    body = {"settings": _nest(leaves), "sources": {leaf.key: leaf.source for leaf in leaves}}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n"


def as_yaml(leaves: list[Value], file: Path | None) -> str:
    """detector.yaml as the detector sees it, each value's source in a comment."""
    lines = [f"# effective configuration (file: {file or 'none'}; "
             f"environment variables {ENV_PREFIX}*)"]
    section: str | None = None
    for leaf in leaves:
        *sections, name = leaf.key.split(".")
        indent = "  " * len(sections)
        if sections and sections[0] != section:
            section = sections[0]
            lines.append(f"{section}:")
        elif not sections:
            section = None
        scalar = yaml.safe_dump(leaf.value, default_flow_style=True, width=10_000,
                                allow_unicode=True).removesuffix("\n...\n").strip()
        lines.append(f"{indent}{name}: {scalar}  # {leaf.source}")
    return "\n".join(lines) + "\n"
