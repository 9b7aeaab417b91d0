"""The Helm chart: lint, render, validate against Kubernetes schemas offline, and check
probes, security context, labels, timing, secrets, autoscaling, the rendered config (with
the daemon's own settings code) and the Grafana dashboard (against the exported metrics)."""

from __future__ import annotations

import functools
import hashlib
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

from detector import calibrate, replay
from detector.cli import build_parser
from detector.config import load_settings
from detector.metrics import Metrics

CHART = Path("helm/detector")
ALL_ENABLED = CHART / "ci/all-enabled-values.yaml"
KUBE_VERSION = "1.33.0"
# Custom resources: kubernetes-validate bundles only the built-in API schemas.
CRDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1 CRD (Prometheus operator): no bundled schema",
    "ScaledObject": "keda.sh/v1alpha1 CRD (KEDA): no bundled schema",
}
LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart"}
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "all-enabled": ("-f", str(ALL_ENABLED)),
    "hpa": ("--set", "hpa.enabled=true", "--set", "dashboard.enabled=true",
            "--set", "job.enabled=true"),
}
Doc = dict[str, Any]
POD_TMP = "/tmp"  # noqa: S108 - the mount path inside the pod, not a file used here


def helm() -> str:
    """The helm binary: $HELM, else .cache/bin/helm, else PATH. Missing helm is a failure."""
    for candidate in (os.environ.get("HELM"), ".cache/bin/helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("helm not found: run `bash scripts/ensure-helm.sh` (make test does), "
                "or point $HELM at a helm binary")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False,
                          timeout=120)


@functools.cache
def render(*args: str) -> tuple[Doc, ...]:
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    [doc] = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def pod_spec(docs: tuple[Doc, ...], kind: str = "StatefulSet") -> Doc:
    spec: Doc = one(docs, kind)["spec"]["template"]["spec"]
    return spec


def rendered_config(docs: tuple[Doc, ...]) -> str:
    text: str = one(docs, "ConfigMap", "rel-detector")["data"]["detector.yaml"]
    return text


class TestLintAndSchemas:
    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_lint(self, variant: str) -> None:
        """helm lint --strict passes with default values, everything enabled, and the HPA."""
        result = run_helm("lint", "--strict", str(CHART), *VARIANTS[variant])
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_objects_validate_against_kubernetes_schemas(self, variant: str) -> None:
        """every built-in object validates strictly against the Kubernetes 1.33 schema;
        only the CRDs listed in CRDS are skipped."""
        docs = render(*VARIANTS[variant])
        checked = [d["kind"] for d in docs if d["kind"] not in CRDS]
        for doc in docs:
            if doc["kind"] not in CRDS:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert {"StatefulSet", "Service", "ConfigMap", "ServiceAccount"} <= set(checked)

    def test_validator_rejects_an_invalid_object(self) -> None:
        """the offline validation really checks (an unknown field fails in strict mode)."""
        pod = dict(one(render(), "StatefulSet"))
        pod["spec"] = {**pod["spec"], "replicaz": 2}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)

    def test_values_schema_rejects_bad_values(self) -> None:
        """values.schema.json refuses secrets in config and an unknown Job command."""
        secret = run_helm("template", "rel", str(CHART), "--set", "config.embedding.api_key=k")
        assert secret.returncode != 0
        assert "api_key" in secret.stderr
        job = run_helm("template", "rel", str(CHART), "--set", "job.enabled=true",
                       "--set", "job.args={run}")
        assert job.returncode != 0
        assert "replay" in job.stderr


class TestObjects:
    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_every_object_has_the_standard_labels(self, variant: str) -> None:
        """app.kubernetes.io/* and helm.sh/chart labels on every object and pod template."""
        for doc in render(*VARIANTS[variant]):
            assert set(doc["metadata"]["labels"]) >= LABELS, doc["kind"]
            template = doc.get("spec", {}).get("template")
            if template:
                assert set(template["metadata"]["labels"]) >= LABELS, doc["kind"]

    def test_all_enabled_renders_every_optional_object(self) -> None:
        """ServiceMonitor, ScaledObject, dashboard, Job and PDB appear when enabled."""
        kinds = sorted(d["kind"] for d in render(*VARIANTS["all-enabled"]))
        for kind in ("ServiceMonitor", "ScaledObject", "Job", "PodDisruptionBudget",
                     "ServiceAccount", "StatefulSet", "Service"):
            assert kind in kinds
        assert kinds.count("ConfigMap") == 2
        assert "HorizontalPodAutoscaler" not in kinds
        assert {d["kind"] for d in render()} == {
            "StatefulSet", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"}

    def test_selectors_pick_the_daemon_pods_only(self) -> None:
        """Service, PDB and StatefulSet select the daemon's pods; the Job's pods join none
        of them; the ServiceMonitor scrapes a port the Service has."""
        docs = render(*VARIANTS["all-enabled"])
        daemon = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
        job = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
        service = one(docs, "Service")
        selectors = [service["spec"]["selector"],
                     one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"],
                     one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]]
        for selector in selectors:
            assert selector.items() <= daemon.items()
            assert not selector.items() <= job.items()
        assert job["app.kubernetes.io/component"] == "calibrate"
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in one(docs, "ServiceMonitor")["spec"]["endpoints"]} <= ports
        assert one(docs, "StatefulSet")["spec"]["serviceName"] == service["metadata"]["name"]


class TestWorkload:
    def test_probes_hit_the_health_routes_on_the_server_port(self) -> None:
        """liveness /healthz and readiness /readyz on the port detector.yaml serves."""
        docs = render()
        [container] = pod_spec(docs)["containers"]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        config = yaml.safe_load(rendered_config(docs))
        assert port["http"] == config["server"]["port"] == 8080
        moved = render("--set", "service.port=9100")
        [container] = pod_spec(moved)["containers"]
        assert container["ports"][0]["containerPort"] == 9100
        assert yaml.safe_load(rendered_config(moved))["server"]["port"] == 9100

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_restricted_security_context(self, variant: str) -> None:
        """pod and containers meet the restricted Pod Security profile; /tmp is writable."""
        docs = render(*VARIANTS[variant])
        kinds = ["StatefulSet"] + (["Job"] if variant != "defaults" else [])
        for kind in kinds:
            pod = pod_spec(docs, kind)
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True
            for key in ("runAsUser", "runAsGroup", "fsGroup"):
                assert isinstance(psc[key], int)
                assert psc[key] > 0
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                volumes = {v["name"]: v for v in pod["volumes"]}
                assert "emptyDir" in volumes[mounts[POD_TMP]]
                assert volumes[mounts["/etc/detector"]]["configMap"]["name"] == "rel-detector"

    @pytest.mark.parametrize("timeout", [20, 45])
    def test_grace_period_outlasts_the_shutdown_timeout(self, timeout: int) -> None:
        """terminationGracePeriodSeconds exceeds the rendered shutdown_timeout_s, and
        both come from shutdownTimeoutSeconds."""
        docs = render("--set", f"shutdownTimeoutSeconds={timeout}")
        config = yaml.safe_load(rendered_config(docs))
        assert config["shutdown_timeout_s"] == timeout
        assert pod_spec(docs)["terminationGracePeriodSeconds"] > config["shutdown_timeout_s"]

    def test_chart_owned_config_keys_are_refused(self) -> None:
        """config.server and config.shutdown_timeout_s fail rendering with a clear message."""
        for key in ("config.server.port=1", "config.shutdown_timeout_s=5"):
            result = run_helm("template", "rel", str(CHART), "--set", key)
            assert result.returncode != 0
            assert "set by the chart" in result.stderr

    def test_config_changes_roll_the_pods(self) -> None:
        """the pod template carries the config's checksum, which changes with the config."""
        def checksum(*args: str) -> str:
            docs = render(*args)
            annotation: str = one(docs, "StatefulSet")["spec"]["template"]["metadata"][
                "annotations"]["checksum/config"]
            rendered = rendered_config(docs).rstrip("\n").encode()
            assert annotation == hashlib.sha256(rendered).hexdigest()
            return annotation

        assert checksum() != checksum("--set", "config.scoring.threshold=0.3")

    def test_static_membership_from_the_stable_pod_name(self) -> None:
        """a StatefulSet (stable pod names) passes metadata.name as the group instance id."""
        docs = render()
        assert one(docs, "StatefulSet")["spec"]["podManagementPolicy"] == "Parallel"
        env = {e["name"]: e for e in pod_spec(docs)["containers"][0]["env"]}
        field = env["DETECTOR_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
        assert field["fieldPath"] == "metadata.name"

    def test_container_args_are_valid_detector_commands(self) -> None:
        """the daemon and the Job pass --config to the mounted file and a real subcommand."""
        docs = render(*VARIANTS["all-enabled"])
        parser = build_parser()
        daemon = parser.parse_args(pod_spec(docs)["containers"][0]["args"])
        assert (daemon.command, daemon.config) == ("run", "/etc/detector/detector.yaml")
        job = pod_spec(docs, "Job")["containers"][0]
        parsed = parser.parse_args(job["args"])
        assert parsed.config == "/etc/detector/detector.yaml"
        assert parsed.func.__module__ == calibrate.__name__
        assert job["workingDir"] == "/work"
        assert "/work" in {m["mountPath"] for m in job["volumeMounts"]}
        default_job = pod_spec(render("--set", "job.enabled=true"), "Job")["containers"][0]
        assert parser.parse_args(default_job["args"]).func.__module__ == replay.__name__


class TestSecrets:
    def test_secrets_come_from_existing_secrets_only(self) -> None:
        """API key and SASL password are secretKeyRefs, never literals or config keys."""
        docs = render(*VARIANTS["all-enabled"])
        for kind in ("StatefulSet", "Job"):
            env = {e["name"]: e for e in pod_spec(docs, kind)["containers"][0]["env"]}
            api = env["DETECTOR_EMBEDDING__API_KEY"]
            assert api["valueFrom"]["secretKeyRef"] == {"name": "detector-dashscope",
                                                        "key": "api-key"}
            sasl = env["DETECTOR_KAFKA__SASL_PASSWORD"]
            assert sasl["valueFrom"]["secretKeyRef"] == {"name": "detector-kafka",
                                                         "key": "password"}
            assert "value" not in api
            assert "value" not in sasl
        assert "api_key" not in rendered_config(docs)
        assert "sasl_password" not in rendered_config(docs)
        default_env = pod_spec(render())["containers"][0]["env"]
        assert [e["name"] for e in default_env] == ["DETECTOR_KAFKA__GROUP_INSTANCE_ID"]


class TestRenderedConfig:
    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_config_and_env_load_with_the_daemons_settings(
        self, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """detector.yaml from the ConfigMap plus the pod's environment variables (given
        stand-in values) load with detector.config.load_settings and land in the fields
        the chart means them for."""
        docs = render(*VARIANTS[variant])
        path = tmp_path / "detector.yaml"
        path.write_text(rendered_config(docs))
        stand_in = {"metadata.name": "rel-detector-0"}
        for var in pod_spec(docs)["containers"][0]["env"]:
            source = var["valueFrom"]
            value = (stand_in[source["fieldRef"]["fieldPath"]] if "fieldRef" in source
                     else f"secret-{source['secretKeyRef']['key']}")
            monkeypatch.setenv(var["name"], value)
        settings = load_settings(path)
        assert settings.server.port == 8080
        assert settings.shutdown_timeout_s == 20
        assert settings.kafka.group_instance_id == "rel-detector-0"
        assert settings.kafka.session_timeout_ms == 60_000
        if variant == "all-enabled":
            api_key = settings.api_key()
            assert api_key is not None
            assert api_key.get_secret_value() == "secret-api-key"
            assert settings.kafka.sasl_password is not None
            assert settings.kafka.sasl_password.get_secret_value() == "secret-password"


class TestAutoscaling:
    def test_keda_scales_the_statefulset_on_consumer_lag(self) -> None:
        """the ScaledObject's kafka trigger watches the daemon's group and input topic."""
        docs = render(*VARIANTS["all-enabled"])
        scaled = one(docs, "ScaledObject")["spec"]
        config = yaml.safe_load(rendered_config(docs))
        assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                            "name": "rel-detector"}
        [trigger] = scaled["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == config["kafka"]["bootstrap_servers"]
        assert meta["consumerGroup"] == config["kafka"]["group_id"]
        assert meta["topic"] == config["input"]["topic"]
        assert int(meta["lagThreshold"]) > 0
        assert trigger["authenticationRef"] == {"name": "detector-kafka-scaler"}
        assert "replicas" not in one(docs, "StatefulSet")["spec"]

    def test_hpa_scales_the_statefulset(self) -> None:
        """the HPA (autoscaling/v2) targets the StatefulSet, which then has no replicas."""
        docs = render(*VARIANTS["hpa"])
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
        assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-detector"
        assert "replicas" not in one(docs, "StatefulSet")["spec"]
        assert not [d for d in docs if d["kind"] == "ScaledObject"]
        assert one(render(), "StatefulSet")["spec"]["replicas"] == 2

    def test_keda_and_hpa_are_exclusive(self) -> None:
        """enabling both autoscalers fails rendering with a clear message."""
        result = run_helm("template", "rel", str(CHART), "--set", "keda.enabled=true",
                          "--set", "hpa.enabled=true")
        assert result.returncode != 0
        assert "mutually exclusive" in result.stderr


class TestDashboard:
    DASHBOARD = orjson.loads((CHART / "dashboards/detector.json").read_bytes())

    def exprs(self) -> list[str]:
        return [t["expr"] for p in self.DASHBOARD["panels"] for t in p["targets"]]

    def test_uses_only_exported_metrics(self) -> None:
        """every detector_* series in the dashboard exists in detector.metrics."""
        used = {m for e in self.exprs() for m in re.findall(r"detector_[a-z_]+", e)}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""]}
        exported = {family.name + suffix for family in Metrics().registry.collect()
                    for suffix in suffixes[family.type]}
        assert used
        assert used <= exported, used - exported

    def test_shows_what_operators_need(self) -> None:
        """throughput, alerts, similarity heatmap, embedding latency quantiles and
        outcomes, dead letters by reason and consumer lag are all on it."""
        text = "\n".join(self.exprs())
        for needle in ("rate(detector_records_consumed_total", "detector_alerts_total",
                       "histogram_quantile(0.99, sum by (le) "
                       "(rate(detector_embedding_request_seconds_bucket",
                       "histogram_quantile(0.5,", "by (outcome)", "by (reason)",
                       "detector_dead_letters_total", "detector_consumer_lag"):
            assert needle in text, needle
        [heatmap] = [p for p in self.DASHBOARD["panels"] if p["type"] == "heatmap"]
        assert "detector_similarity_bucket" in heatmap["targets"][0]["expr"]
        assert heatmap["targets"][0]["format"] == "heatmap"

    def test_configmap_carries_the_dashboard_for_the_grafana_sidecar(self) -> None:
        """the ConfigMap has the sidecar label and the JSON file unchanged."""
        cm = one(render(*VARIANTS["all-enabled"]), "ConfigMap", "rel-detector-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert orjson.loads(cm["data"]["detector.json"]) == self.DASHBOARD
