"""The Helm chart: lint, render, validate against Kubernetes schemas offline, and check
probes, security context, labels, timing, the rendered config and the dashboard."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import pytest
import yaml

from detector.config import load_settings
from detector.metrics import Metrics

CHART = Path("helm/detector")
KUBE_VERSION = "1.33.0"
CRDS = {"ServiceMonitor": "monitoring.coreos.com CRD: no bundled schema",
        "ScaledObject": "keda.sh CRD: no bundled schema"}
LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart"}


def helm() -> str:
    for candidate in (os.environ.get("HELM"), ".cache/bin/helm", shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("helm not found: run `bash scripts/ensure-helm.sh` (make test does)")


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run([helm(), "template", "rel", str(CHART), *args], capture_output=True,
                         text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


VARIANTS = {
    "defaults": [],
    "all-enabled": ["-f", str(CHART / "ci/all-enabled-values.yaml")],
    "hpa": ["--set", "hpa.enabled=true", "--set", "dashboard.enabled=true"],
}


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


class TestChart:
    @pytest.mark.parametrize("values", [[], ["-f", str(CHART / "ci/all-enabled-values.yaml")]])
    def test_lint(self, values: list[str]) -> None:
        """helm lint passes with default values and with everything enabled."""
        result = subprocess.run([helm(), "lint", str(CHART), *values], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_objects_validate_against_kubernetes_schemas(self, variant: str) -> None:
        """every non-CRD object validates strictly against the Kubernetes schema."""
        docs = render(*VARIANTS[variant])
        checked = 0
        for doc in docs:
            if doc["kind"] in CRDS:
                continue  # skipped on purpose: see CRDS for why
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            checked += 1
        assert checked >= 5

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_every_object_has_the_standard_labels(self, variant: str) -> None:
        """app.kubernetes.io/* and helm.sh/chart labels on every object."""
        for doc in render(*VARIANTS[variant]):
            assert set(doc["metadata"]["labels"]) >= LABELS, doc["kind"]

    def test_all_enabled_renders_every_optional_object(self) -> None:
        """ServiceMonitor, ScaledObject, dashboard, Job and PDB appear when enabled."""
        kinds = sorted(d["kind"] for d in render(*VARIANTS["all-enabled"]))
        for kind in ("ServiceMonitor", "ScaledObject", "Job", "PodDisruptionBudget"):
            assert kind in kinds
        assert kinds.count("ConfigMap") == 2
        assert "HorizontalPodAutoscaler" not in kinds

    def test_keda_and_hpa_are_exclusive(self) -> None:
        """enabling both autoscalers fails rendering with a clear message."""
        result = subprocess.run(
            [helm(), "template", "rel", str(CHART), "--set", "keda.enabled=true",
             "--set", "hpa.enabled=true"], capture_output=True, text=True, check=False)
        assert result.returncode != 0
        assert "mutually exclusive" in result.stderr

    def test_probes_security_and_shutdown_budget(self) -> None:
        """probes hit /healthz and /readyz on the server port; restricted security
        context; the grace period outlasts the daemon's shutdown timeout."""
        docs = render()
        pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["ports"][0]["containerPort"] == 8080
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        config = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["detector.yaml"])
        assert pod["terminationGracePeriodSeconds"] > config["shutdown_timeout_s"]
        env = {e["name"]: e for e in container["env"]}
        assert env["DETECTOR_KAFKA__GROUP_INSTANCE_ID"]["value"] == "$(POD_NAME)"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    def test_api_key_comes_from_the_existing_secret(self) -> None:
        """the key is a secretKeyRef, never a literal value."""
        pod = by_kind(render(*VARIANTS["all-enabled"]), "Deployment")["spec"]["template"]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        ref = env["DETECTOR_EMBEDDING__API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "detector-dashscope", "key": "api-key"}
        assert "value" not in env["DETECTOR_EMBEDDING__API_KEY"]

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_rendered_config_is_valid_for_the_daemon(
        self, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """detector.yaml from the ConfigMap loads with the daemon's own settings code."""
        cm = by_kind([d for d in render(*VARIANTS[variant])
                      if d["metadata"]["name"].endswith("-detector")], "ConfigMap")
        path = tmp_path / "detector.yaml"
        path.write_text(cm["data"]["detector.yaml"])
        monkeypatch.setenv("DETECTOR_KAFKA__SASL_PASSWORD", "from-the-secret")
        settings = load_settings(path)
        assert settings.server.port == 8080
        assert settings.shutdown_timeout_s == 20

    def test_dashboard_uses_only_exported_metrics(self) -> None:
        """every detector_* series in the dashboard exists in detector.metrics."""
        dashboard = orjson.loads((CHART / "dashboards/detector.json").read_bytes())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        used = {m for e in exprs for m in re.findall(r"detector_[a-z_]+", e)}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""]}
        exported = {family.name + suffix for family in Metrics().registry.collect()
                    for suffix in suffixes[family.type]}
        assert used
        assert used <= exported, used - exported
