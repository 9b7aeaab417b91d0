# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create the virtualenv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-netfaults lint typecheck unit bench bench-quality bench-soak clean schema docs docs-site

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m devtools.demo

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

test: venv
	bash scripts/ensure-helm.sh
	bash scripts/ensure-promtool.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site
	$(PY) -m pytest -m "not netfaults_long"

# Network faults in network namespaces (root, iproute2; tests/netns.py): all scenarios,
# about 15 minutes. `make test` runs only the quickest (a 20 s partition, at-least-once).
test-netfaults: venv
	$(PY) -m pytest -m netfaults -s tests/test_netfaults.py

unit: venv
	$(PY) -m pytest -m "not kafka and not chaos"

# Regenerate config/detector.schema.json and the config part of the chart's
# values.schema.json from the settings model (tests/test_schema.py fails when stale).
schema: venv
	$(PY) -m devtools.schema

# Regenerate the reference pages of the documentation site from the settings model, the
# CLI parser and the chart's values schema (tests/test_docs.py fails when stale).
docs: venv
	$(PY) -m devtools.docs

# Build the site into site/ (`make test` does the same with --strict).
docs-site: venv docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: venv
	$(PY) -m bench.run

bench-soak: venv
	$(PY) -m bench.soak --minutes 30

bench-quality: venv
	$(PY) -m pip install --quiet --no-deps -r bench/quality/requirements.txt
	$(PY) -m bench.quality.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .cache/demo site
