"""The package has no import cycles, counting imports inside functions.

The import graph is read from the source with `ast`: every `import`/`from … import`
anywhere in a module (function-level ones too, which hide a cycle from the interpreter
but not from a reader), except those under `if TYPE_CHECKING:`. Importing
``detector.a.b`` also runs ``detector/a/__init__.py``, so a module depends on the
packages of what it imports too (not on its own packages, which are being imported
already when it runs, unless it names them). Run as a script to print the edges and cycles:
``python -m tests.test_imports``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "detector"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name → source file for every module of the package."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:` blocks (not run at import time)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or is inside of."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _parents(name: str) -> set[str]:
    """The packages whose __init__ runs before `name`."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_edges(known: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module → package modules it imports (anywhere but TYPE_CHECKING blocks)."""
    known = known if known is not None else modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = _resolve(target, known)
                if resolved is None:
                    continue
                implied = (_parents(resolved) & known.keys()) - _parents(name)
                edges[name] |= ({resolved} | implied) - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each listed once starting from its smallest module."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt == start:
                found.add(tuple(path))
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, start, [start])
    return [list(c) for c in sorted(found)]


def test_the_graph_sees_function_level_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from detector.sub.impl import thing\n")
    (pkg / "sub" / "impl.py").write_text("thing = 1\n")
    (pkg / "a.py").write_text("def f() -> None:\n    from detector import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nfrom . import a\n"
                              "if TYPE_CHECKING:\n    from detector import c\n")
    (pkg / "c.py").write_text("import detector.b\nfrom .sub.impl import thing\n")
    edges = import_edges(modules(pkg))
    assert edges["detector.a"] == {"detector.b"}
    assert edges["detector.b"] == {"detector.a"}  # the TYPE_CHECKING import is not an edge
    assert edges["detector.c"] == {"detector.b", "detector.sub", "detector.sub.impl"}
    assert edges["detector.sub"] == {"detector.sub.impl"}
    assert edges["detector.sub.impl"] == set()  # its own package is not a dependency
    assert cycles(edges) == [["detector.a", "detector.b"]]


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(import_edges()) == []


# What each part of the package may import: the layers, lowest first. Top-level modules
# (config, errors, metrics, logs, signals, exits, progress) are the base every part may use;
# only `detector.cli` sits above `commands`.
LAYERS: dict[str, set[str]] = {
    "io": set(),
    "embedders": {"io"},
    "model": {"io"},
    "calibration": {"io", "embedders", "model"},
    "state": {"io", "model", "calibration"},
    "stream": {"io", "embedders", "model"},
    "operating": {"io", "embedders", "model", "calibration", "state", "stream"},
    "commands": {"io", "embedders", "model", "calibration", "state", "stream", "operating"},
}


def part(module: str) -> str:
    """The part of the package a module belongs to: its subpackage, else `cli` or `base`."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "cli" if module == f"{PACKAGE}.cli" else "base"


def test_every_part_imports_only_the_layers_below_it() -> None:
    upward = []
    for module, targets in import_edges().items():
        mine = part(module)
        for target in targets:
            theirs = part(target)
            if theirs in {mine, "base"} or mine == "cli":
                continue
            if mine == "base" or theirs not in LAYERS.get(mine, set()):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_nothing_in_the_runtime_package_imports_the_development_tools() -> None:
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "devtools" or n.startswith("devtools.") for n in names), path


def test_the_wheel_carries_the_runtime_package_and_not_the_development_tools() -> None:
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = find_packages(where=str(ROOT.parent), include=include)
    assert "detector.stream" in found
    assert "detector.model" in found
    assert not [p for p in found if p.split(".")[0] != PACKAGE]


if __name__ == "__main__":
    graph = import_edges()
    for module, targets in sorted(graph.items()):
        sys.stdout.write(f"{module} -> {', '.join(sorted(targets)) or '(none)'}\n")
    found = cycles(graph)
    sys.stdout.write(f"\n{sum(len(t) for t in graph.values())} edges, {len(found)} cycles\n")
    for cycle in found:
        sys.stdout.write("  " + " -> ".join([*cycle, cycle[0]]) + "\n")
