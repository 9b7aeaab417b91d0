"""The Helm chart: lint, render, validate against Kubernetes schemas offline, and check
probes, security context, labels, timing, secrets, autoscaling, the rendered config (with
the daemon's own settings code) and the Grafana dashboard (against the exported metrics)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import kubernetes_validate
import orjson
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

from detector.cli import build_parser
from detector.config import Settings, load_settings
from detector.metrics import Metrics
from detector.state.store import COMPACTED
from tests.helpers import CHART, Doc, one, pod_spec, render, rendered_config, run_helm

ALL_ENABLED = CHART / "ci/all-enabled-values.yaml"
KUBE_VERSION = "1.33.0"
# Custom resources: kubernetes-validate bundles only the built-in API schemas. The
# Prometheus Operator's are checked against models generated from its CRDs
# (cloudcoil-models-prometheus-operator), Strimzi's KafkaTopic field by field.
CRDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1 CRD: TestPrometheusOperator",
    "PrometheusRule": "monitoring.coreos.com/v1 CRD: TestPrometheusOperator",
    "ScaledObject": "keda.sh/v1alpha1 CRD (KEDA): no bundled schema",
    "KafkaTopic": "kafka.strimzi.io/v1beta2 CRD (Strimzi): TestStrimziTopics, field by field",
}
LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart"}
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "all-enabled": ("-f", str(ALL_ENABLED)),
    "hpa": ("--set", "hpa.enabled=true", "--set", "dashboard.enabled=true",
            "--set", "job.enabled=true"),
}
ALERTS = ("DetectorConsumerLagGrowing", "DetectorNoPartitionsAssigned",
          "DetectorEmbeddingErrors", "DetectorDeadLetterRate", "DetectorEmbedderFatal",
          "DetectorPublishRetries", "DetectorAlertRateHigh", "DetectorDriftEvents",
          "DetectorCalibrationRefused")
POD_TMP = "/tmp"  # noqa: S108 - the mount path inside the pod, not a file used here


def promtool() -> str:
    """promtool: $PROMTOOL, else .cache/bin/promtool, else PATH. Missing is a failure."""
    for candidate in (os.environ.get("PROMTOOL"), ".cache/bin/promtool",
                      shutil.which("promtool")):
        if candidate and Path(candidate).is_file():
            return str(Path(candidate).resolve())
    pytest.fail("promtool not found: run `bash scripts/ensure-promtool.sh` (make test "
                "does), or point $PROMTOOL at a promtool binary")


def check_rules(groups: list[Doc], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a rule file holding `groups`."""
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, check=False, timeout=120)


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
        """ServiceMonitor, ScaledObject, dashboard, Job, PDB, PrometheusRule,
        NetworkPolicy, KafkaTopics, the recalibration CronJob with its script and archive
        PVC appear when enabled."""
        kinds = sorted(d["kind"] for d in render(*VARIANTS["all-enabled"]))
        for kind in ("ServiceMonitor", "ScaledObject", "Job", "PodDisruptionBudget",
                     "ServiceAccount", "StatefulSet", "Service", "PrometheusRule",
                     "NetworkPolicy", "KafkaTopic", "CronJob", "PersistentVolumeClaim"):
            assert kind in kinds
        assert kinds.count("ConfigMap") == 3  # config, dashboard, recalibration script
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
        assert parsed.command == "calibrate"
        assert job["workingDir"] == "/work"
        assert "/work" in {m["mountPath"] for m in job["volumeMounts"]}
        default_job = pod_spec(render("--set", "job.enabled=true"), "Job")["containers"][0]
        assert parser.parse_args(default_job["args"]).command == "replay"


    def test_recalibration_cronjob_runs_one_script_with_deadlines_and_archive(self) -> None:
        """The CronJob runs the rendered recalibration script (extraArgs as its
        arguments), one run at a time, with its deadlines, as the daemon's pods are
        configured (env, volumes, security), the archive PVC mounted at /archive."""
        docs = render(*VARIANTS["all-enabled"])
        cron = one(docs, "CronJob")
        spec = cron["spec"]
        assert spec["schedule"] == "30 2 * * *"
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == 3600
        job_spec = spec["jobTemplate"]["spec"]
        assert (job_spec["backoffLimit"], job_spec["activeDeadlineSeconds"]) == (0, 14400)
        assert cron["metadata"]["labels"]["app.kubernetes.io/component"] == "recalibrate"
        pod = job_spec["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"] == ["/bin/sh", "/etc/detector-recalibrate/recalibrate.sh"]
        assert container["args"] == ["--holdout", "0.3"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["archive"] == "/archive"
        claim = volumes["archive"]["persistentVolumeClaim"]["claimName"]
        pvc = one(docs, "PersistentVolumeClaim", claim)
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        script = volumes["recalibrate"]["configMap"]["name"]
        assert "recalibrate.sh" in one(docs, "ConfigMap", script)["data"]
        job = pod_spec(docs, "Job")["containers"][0]  # configured as the one-off Job
        assert container["env"] == job["env"]
        assert container["securityContext"] == job["securityContext"]
        assert pod["automountServiceAccountToken"] is False
        assert not [d for d in render() if d["kind"] == "CronJob"]
        plain = render("--set", "recalibration.enabled=true")
        assert not [d for d in plain if d["kind"] == "PersistentVolumeClaim"]
        plain_pod = one(plain, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert "archive" not in {v["name"] for v in plain_pod["volumes"]}


FAKE_DETECTOR = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
def value(flag):
    return args[args.index(flag) + 1] if flag in args else None
if "calibrate" in args and "--publish" not in args:
    open(value("--out"), "w").write('{"artifact": "candidate"}')
    os.makedirs(value("--report-dir"))
    sys.exit(int(os.environ.get("FAKE_CALIBRATE_EXIT", "0")))
if "--compare" in args:
    open(value("--output"), "w").write('{"bounds": {"within": false}}')
    sys.exit(int(os.environ["FAKE_COMPARE_EXIT"]))
sys.exit(0)
"""


class TestRecalibrationScript:
    """The CronJob's script, run here with `sh` and a stand-in `detector` on PATH that
    records its arguments and exits as told."""

    def run(self, tmp_path: Path, values: tuple[str, ...], *, compare_exit: int = 0,
            calibrate_exit: int = 0) -> tuple[int, list[list[str]], str]:
        docs = render(*values)
        name = one(docs, "CronJob")["metadata"]["name"]
        tmp_path.mkdir(exist_ok=True)
        script = tmp_path / "recalibrate.sh"
        script.write_text(one(docs, "ConfigMap", name)["data"]["recalibrate.sh"])
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        fake = bin_dir / "detector"
        fake.write_text(FAKE_DETECTOR)
        fake.chmod(0o755)
        log = tmp_path / "calls.jsonl"
        log.write_text("")
        container = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"][
            "spec"]["containers"][0]
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
               "FAKE_COMPARE_EXIT": str(compare_exit),
               "FAKE_CALIBRATE_EXIT": str(calibrate_exit),
               "RECALIBRATE_CONFIG": "/etc/detector/detector.yaml",
               "RECALIBRATE_WORK": str(tmp_path / "work"),
               "RECALIBRATE_ARCHIVE": str(tmp_path / "archive")}
        if "recalibration.archive.enabled=true" not in values and \
                values != VARIANTS["all-enabled"]:
            del env["RECALIBRATE_ARCHIVE"]  # the script's own default: no archive
        result = subprocess.run(["/bin/sh", str(script), *container.get("args", [])],
                                env=env, capture_output=True, text=True, check=False,
                                timeout=60)
        calls = [orjson.loads(line) for line in log.read_text().splitlines()]
        return result.returncode, calls, result.stderr

    def test_publishes_only_a_candidate_within_the_compare_bounds(self, tmp_path: Path
                                                                 ) -> None:
        """calibrate (last hours, exclusions, extraArgs) → replay --compare of the
        candidate over the last compare.hours with the bounds → publish of that very
        file; every command parses with the real CLI. Out of bounds (exit 6): nothing is
        published, the run fails with 6 and its outcome says why."""
        code, calls, _ = self.run(tmp_path / "ok", VARIANTS["all-enabled"])
        assert code == 0
        parsed = [build_parser().parse_args(c) for c in calls]
        assert [p.command for p in parsed] == ["calibrate", "replay", "calibrate"]
        cal_args, cmp_args, pub_args = parsed
        assert (cal_args.topic, cal_args.last_hours, cal_args.holdout) == ("comments", 12.0,
                                                                          0.3)
        assert (cal_args.exclude_alerted, cal_args.exclude_labelled, cal_args.publish) == (
            True, True, False)
        assert cmp_args.compare
        assert cmp_args.artifact == cal_args.out
        assert (cmp_args.max_alert_ratio, cmp_args.max_threshold_move) == (1.5, 0.02)
        start = datetime.fromtimestamp(cmp_args.time_from / 1000, UTC)  # parsed to epoch ms
        assert abs((datetime.now(UTC) - start).total_seconds() - 6 * 3600) < 120
        assert (pub_args.publish, pub_args.artifact) == (True, cal_args.out)
        assert {p.config for p in parsed} == {"/etc/detector/detector.yaml"}
        [run_dir] = (tmp_path / "ok/archive/runs").iterdir()
        assert (run_dir / "outcome").read_text() == "published\n"
        assert {f.name for f in run_dir.iterdir()} >= {"calibration.json", "report",
                                                      "compare.json", "outcome"}

        code, calls, err = self.run(tmp_path / "out", VARIANTS["all-enabled"],
                                    compare_exit=6)
        assert code == 6
        assert len(calls) == 2
        assert not any("--publish" in c for c in calls)
        [run_dir] = (tmp_path / "out/archive/runs").iterdir()
        assert "not published: compare exit 6" in (run_dir / "outcome").read_text()
        assert "not published" in err

        code, calls, _ = self.run(tmp_path / "failed", VARIANTS["all-enabled"],
                                  calibrate_exit=5)
        assert (code, len(calls)) == (5, 1)

    def test_without_compare_it_publishes_unchecked(self, tmp_path: Path) -> None:
        code, calls, _ = self.run(tmp_path, ("--set", "recalibration.enabled=true",
                                             "--set", "recalibration.compare.enabled=false"))
        assert code == 0
        assert ["--compare" in c for c in calls] == [False, False]
        assert "--publish" in calls[1]
        assert (tmp_path / "work/runs").is_dir()

    def test_the_archive_keeps_the_newest_runs(self, tmp_path: Path) -> None:
        """archive.keep runs stay on the volume, the newest ones, whatever their outcome."""
        for _ in range(5):
            self.run(tmp_path, VARIANTS["all-enabled"])  # keep: 3
        runs = sorted(p.name for p in (tmp_path / "archive/runs").iterdir())
        assert len(runs) == 3
        self.run(tmp_path, VARIANTS["all-enabled"], compare_exit=6)
        after = sorted(p.name for p in (tmp_path / "archive/runs").iterdir())
        assert len(after) == 3
        assert after[:2] == runs[1:]
        assert "not published" in (tmp_path / "archive/runs" / after[-1] / "outcome"
                                   ).read_text()


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
            if "value" in var:  # extraEnv
                monkeypatch.setenv(var["name"], var["value"])
                continue
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
        used = {m for e in self.exprs()
                for m in re.findall(r"(?:detector|process)_[a-z_]+", e)}
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

    def test_scoped_by_namespace_and_pod_with_rate_interval(self) -> None:
        """namespace and pod variables exist and every selector uses them; rates use
        $__rate_interval; process metrics, cost and readiness have panels."""
        names = {v["name"] for v in self.DASHBOARD["templating"]["list"]}
        assert {"datasource", "namespace", "pod"} <= names
        for expr in self.exprs():
            for selector in re.findall(r"(?:detector|process)_[a-z_]+(\{[^}]*\})?", expr):
                assert 'namespace="$namespace"' in selector, expr
                assert 'pod=~"$pod"' in selector, expr
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window == "$__rate_interval", expr
        text = "\n".join(self.exprs())
        for needle in ("detector_embedding_cost_usd_total", "detector_ready",
                       "detector_assigned_partitions", "process_cpu_seconds_total",
                       "process_resident_memory_bytes", "process_open_fds"):
            assert needle in text, needle
        ids = [p["id"] for p in self.DASHBOARD["panels"]]
        assert len(ids) == len(set(ids))

    def test_shows_drift_labels_calibration_cache_and_retries(self) -> None:
        """panels for drift events, label outcomes and precision, the calibration in
        force and published artifacts, the cache hit ratio and publish retries."""
        titles = {p["title"]: "\n".join(t["expr"] for t in p["targets"])
                  for p in self.DASHBOARD["panels"]}
        wanted = {
            "Drift events": ["by (scope, moved, classification)",
                             "detector_drift_events_total"],
            "labels by outcome": ["by (outcome)", "detector_feedback_labels_total"],
            "precision": ["detector_feedback_true_alerts", "detector_feedback_false_alerts"],
            "Calibration": ["by (version)", "detector_calibration_info",
                            "by (outcome)", "detector_calibrations_published_total"],
            "cache hit ratio": ["detector_embedding_cache_hits_total",
                                "detector_embedding_cache_misses_total"],
            "Publish retries": ["detector_publish_retries_total"],
        }
        for part, needles in wanted.items():
            [exprs] = [e for title, e in titles.items() if part in title]
            for needle in needles:
                assert needle in exprs, (part, needle)

    def test_every_query_parses_with_promtool(self, tmp_path: Path) -> None:
        """the queries, with Grafana's variables substituted, pass `promtool check rules`
        as recording rules; a misspelt one fails."""
        def rules(exprs: list[str]) -> list[Doc]:
            subst = [e.replace("$__rate_interval", "5m").replace("$namespace", "ns")
                     .replace("$pod", ".*") for e in exprs]
            return [{"name": "dashboard", "rules": [
                {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(subst)]}]

        exprs = self.exprs()
        result = check_rules(rules(exprs), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        broken = check_rules(rules([*exprs, "sum(rate(detector_alerts_total[5m])"]), tmp_path)
        assert broken.returncode != 0

    def test_configmap_carries_the_dashboard_for_the_grafana_sidecar(self) -> None:
        """the ConfigMap has the sidecar label and the JSON file unchanged."""
        cm = one(render(*VARIANTS["all-enabled"]), "ConfigMap", "rel-detector-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert orjson.loads(cm["data"]["detector.json"]) == self.DASHBOARD


def loaded_config(docs: tuple[Doc, ...], tmp_path: Path) -> Settings:
    """The rendered detector.yaml loaded by the daemon's code (a stand-in SASL password,
    which the pod gets from a Secret)."""
    path = tmp_path / "detector.yaml"
    path.write_text(rendered_config(docs))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DETECTOR_KAFKA__SASL_PASSWORD", "stand-in")
        return load_settings(path)


class TestSchemaFromSettings:
    def test_config_typos_and_wrong_types_fail_at_install(self) -> None:
        """the config part of values.schema.json is the settings model's: an unknown key
        in any section, a wrong type or an out-of-range number is refused by helm."""
        for bad, needle in (("config.kafka.bootstrap_server=x", "bootstrap_server"),
                            ("config.scoring.treshold=0.3", "treshold"),
                            ("config.kafka.session_timeout_ms=abc", "session_timeout_ms"),
                            ("config.kafka.session_timeout_ms=1000", "session_timeout_ms"),
                            ("config.log.format=xml", "format"),
                            ("replicaCont=3", "replicaCont")):
            result = run_helm("template", "rel", str(CHART), "--set", bad)
            assert result.returncode != 0, bad
            assert needle in result.stderr, (bad, result.stderr)
        # numbers given with --set arrive as strings; the daemon accepts them, so does helm
        assert rendered_config(render("--set", "config.scoring.threshold=0.3"))


class TestDurableTopics:
    def test_defaults_replicate_the_topics_the_daemon_creates(self, tmp_path: Path) -> None:
        """the chart's defaults: 3 replicas and min.insync.replicas 2 for created topics."""
        settings = loaded_config(render(), tmp_path)
        assert settings.kafka.create_topics is True
        assert settings.kafka.topic_replication_factor == 3
        assert settings.kafka.min_insync_replicas == 2

    def test_strimzi_topics_for_every_topic_written(self, tmp_path: Path) -> None:
        """KafkaTopics (Strimzi v1beta2, field by field) for alerts, dead letters, scores
        and the compacted single-partition state topic, named as the daemon's settings
        name them; the daemon then creates no topic."""
        docs = render(*VARIANTS["all-enabled"])
        settings = loaded_config(docs, tmp_path)
        assert settings.kafka.create_topics is False
        topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
        assert set(topics) == {settings.alerts.topic, settings.alerts.dead_letter_topic,
                               settings.alerts.scores_topic, settings.state.topic}
        for topic in topics.values():
            assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
            assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "my-cluster"
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", topic["metadata"]["name"])
            spec = topic["spec"]
            assert set(spec) == {"topicName", "partitions", "replicas", "config"}
            assert isinstance(spec["partitions"], int)
            assert spec["replicas"] == 3
            assert int(spec["config"]["min.insync.replicas"]) == 2
            assert all(isinstance(v, str | int | float | bool) for v in spec["config"].values())
        state = topics[settings.state.topic]["spec"]
        assert state["partitions"] == 1
        assert {k: str(v) for k, v in state["config"].items()}.items() >= COMPACTED.items()
        alerts = topics[settings.alerts.topic]["spec"]
        assert alerts["partitions"] == 6
        assert alerts["config"]["retention.ms"] == "604800000"
        assert "retention.ms" not in state["config"]

    def test_strimzi_topic_for_drift_events_when_drift_is_enabled(self, tmp_path: Path
                                                                  ) -> None:
        """With config.drift.enabled the drift topic is a KafkaTopic too, named as the
        daemon's settings name it; without it there is none."""
        args = ("--set", "topics.strimzi.enabled=true", "--set",
                "topics.strimzi.clusterName=my-cluster")
        docs = render(*args, "--set", "config.drift.enabled=true", "--set",
                      "config.alerts.drift_topic=ops-drift")
        settings = loaded_config(docs, tmp_path)
        assert settings.drift.enabled
        topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
        assert settings.alerts.drift_topic == "ops-drift"
        assert topics["ops-drift"]["metadata"]["name"].endswith("-drift")
        assert int(topics["ops-drift"]["spec"]["config"]["min.insync.replicas"]) == 2
        plain = render(*args)
        assert not [d for d in plain if d["kind"] == "KafkaTopic"
                    and d["spec"]["topicName"] == "detector-drift"]

    @pytest.mark.parametrize("extra", [
        (),
        ("--set", "config.feedback.enabled=true"),
        ("--set", "config.feedback.enabled=true", "--set", "config.feedback.topic=labels",
         "--set", "config.drift.enabled=true", "--set", "config.alerts.scores_topic=sc",
         "--set", "topics.strimzi.includeInput=true"),
        ("--set", "config.state.enabled=false", "--set", "config.alerts.scores_topic=sc"),
    ])
    def test_strimzi_topic_for_every_topic_the_configuration_uses(
        self, extra: tuple[str, ...], tmp_path: Path,
    ) -> None:
        """The KafkaTopics are exactly the topics the daemon would create with
        create_topics (detector.commands.run.output_topics: alerts, dead letters, scores,
        drift events, operator labels; plus the state topic), and the input topic with
        includeInput; each once, with a distinct object name."""
        from detector.commands.run import output_topics

        docs = render("--set", "topics.strimzi.enabled=true",
                      "--set", "topics.strimzi.clusterName=my-cluster", *extra)
        settings = loaded_config(docs, tmp_path)
        kafka_topics = [d for d in docs if d["kind"] == "KafkaTopic"]
        names = [d["spec"]["topicName"] for d in kafka_topics]
        expected = set(output_topics(settings))
        if settings.state.enabled:
            expected.add(settings.state.topic)
        if "topics.strimzi.includeInput=true" in extra:
            expected.add(settings.input.topic)
        assert sorted(names) == sorted(expected)
        assert len({d["metadata"]["name"] for d in kafka_topics}) == len(kafka_topics)
        if settings.feedback.enabled:
            [feedback] = [d for d in kafka_topics
                          if d["spec"]["topicName"] == settings.feedback.topic]
            assert feedback["metadata"]["name"].endswith("-feedback")
            assert feedback["spec"]["partitions"] == 6

    def test_strimzi_needs_the_cluster_name(self) -> None:
        """KafkaTopics without strimzi.io/cluster are never reconciled: refused."""
        result = run_helm("template", "rel", str(CHART), "--set", "topics.strimzi.enabled=true")
        assert result.returncode != 0
        assert "clusterName" in result.stderr


class TestPodExtras:
    def test_tls_material_mounts_env_labels_and_scheduling(self, tmp_path: Path) -> None:
        """extraVolumes/extraVolumeMounts/extraEnv reach the daemon and the Job; the CA
        file the config points at lies on a mounted Secret; podLabels, priorityClassName
        and topologySpreadConstraints (labelSelector defaulted to the daemon's pods)."""
        docs = render(*VARIANTS["all-enabled"])
        for kind in ("StatefulSet", "Job"):
            pod = pod_spec(docs, kind)
            [container] = pod["containers"]
            env = {e["name"]: e for e in container["env"]}
            cafile = env["DETECTOR_KAFKA__SSL_CAFILE"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            [volume] = [v for m, v in mounts.items()
                        if cafile.startswith(m + "/")]
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes[volume]["secret"]["secretName"] == "my-cluster-cluster-ca-cert"
            assert pod["priorityClassName"] == "detector-high"
            labels = one(docs, kind)["spec"]["template"]["metadata"]["labels"]
            assert labels["example.com/cost-center"] == "trust-and-safety"
        [spread] = pod_spec(docs)["topologySpreadConstraints"]
        selector = one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
        assert spread["labelSelector"]["matchLabels"] == selector
        assert spread["topologyKey"] == "topology.kubernetes.io/zone"
        default = pod_spec(render())
        assert "priorityClassName" not in default
        assert "topologySpreadConstraints" not in default

    def test_network_policy(self) -> None:
        """ingress only to the named HTTP port from the metrics peers; egress DNS plus
        the listed rules; the policy selects the daemon's pods."""
        docs = render(*VARIANTS["all-enabled"])
        policy = one(docs, "NetworkPolicy")["spec"]
        assert policy["podSelector"]["matchLabels"] == one(docs, "StatefulSet")["spec"][
            "selector"]["matchLabels"]
        [ingress] = policy["ingress"]
        ports = {p["name"] for p in pod_spec(docs)["containers"][0]["ports"]}
        assert {p["port"] for p in ingress["ports"]} <= ports
        assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "monitoring"}
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        dns, kafka, https = policy["egress"]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert kafka["ports"] == [{"port": 9093, "protocol": "TCP"}]
        assert https["ports"] == [{"port": 443, "protocol": "TCP"}]
        open_egress = one(render("--set", "networkPolicy.enabled=true"), "NetworkPolicy")
        assert open_egress["spec"]["policyTypes"] == ["Ingress"]


class TestProbes:
    def test_liveness_does_not_wait_for_kafka(self, tmp_path: Path) -> None:
        """the rendered liveness probe allows LIVENESS_BUDGET seconds of no /healthz at
        all; the daemon serves /healthz from the start (tests/test_startup.py measures
        it) and waits for Kafka up to connect_deadline_s, which the chart raises above
        the probe's budget only because liveness does not depend on it."""
        docs = render()
        probe = pod_spec(docs)["containers"][0]["livenessProbe"]
        budget = probe["initialDelaySeconds"] + probe["periodSeconds"] * (
            probe["failureThreshold"] - 1)
        assert budget == liveness_budget(docs)
        assert budget >= 30
        settings = loaded_config(docs, tmp_path)
        assert settings.kafka.connect_deadline_s > budget
        readiness = pod_spec(docs)["containers"][0]["readinessProbe"]
        assert readiness["httpGet"]["path"] == "/readyz"


def liveness_budget(docs: tuple[Doc, ...]) -> int:
    """Seconds from container start until the kubelet restarts a container whose
    /healthz never answers: the first probe at initialDelaySeconds, a restart at the
    failureThreshold-th consecutive failure."""
    probe = pod_spec(docs)["containers"][0]["livenessProbe"]
    return int(probe["initialDelaySeconds"]
               + probe["periodSeconds"] * (probe["failureThreshold"] - 1))


class TestPrometheusOperator:
    """ServiceMonitor and PrometheusRule against the Prometheus Operator's CRD models."""

    @pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
    def test_validates_against_the_crd_model_without_losing_fields(self, kind: str) -> None:
        """the object parses with the CRD-generated model and dumps back unchanged, so
        no field is unknown to the CRD or of the wrong type; the check does reject a
        misspelt field."""
        doc = one(render(*VARIANTS["all-enabled"]), kind)
        model = getattr(monitoring_v1, kind)
        dump = model.model_validate(doc).model_dump(by_alias=True, exclude_none=True,
                                                    mode="json")
        assert dump == doc
        if kind == "PrometheusRule":
            broken = orjson.loads(orjson.dumps(doc))
            broken["spec"]["groups"][0]["rules"][0]["forr"] = "5m"
            assert model.model_validate(broken).model_dump(
                by_alias=True, exclude_none=True, mode="json") != broken

    def test_alerts_cover_the_failure_modes_and_use_exported_series(self) -> None:
        """the nine alerts exist, each on this release's series (namespace and the
        Service's job label), on metrics the daemon exports, with severity and a
        runbook link to a section of the same name in docs/guide/runbook.md."""
        docs = render(*VARIANTS["all-enabled"])
        rule = one(docs, "PrometheusRule")
        assert rule["metadata"]["labels"]["release"] == "prometheus"
        rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        assert set(rules) == set(ALERTS)
        exported = {family.name for family in Metrics().registry.collect()}
        service = one(docs, "Service")["metadata"]["name"]
        runbook = Path("docs/guide/runbook.md").read_text()
        for name, r in rules.items():
            for metric in re.findall(r"detector_[a-z_]+", r["expr"]):
                assert re.sub(r"_(total|bucket|sum|count)$", "", metric) in exported, metric
                assert f'job="{service}"' in r["expr"]
            assert r["labels"]["severity"] in ("warning", "critical")
            assert r["annotations"]["runbook_url"].endswith("#" + name.lower())
            assert f"## {name}\n" in runbook, f"the runbook has no section {name}"

    def test_rules_pass_promtool_and_a_promql_typo_fails(self, tmp_path: Path) -> None:
        """the rendered PrometheusRule's groups pass `promtool check rules` (PromQL, for
        durations, label and annotation templates); the same groups with one expression
        misspelt do not."""
        groups: list[Doc] = one(render(*VARIANTS["all-enabled"]), "PrometheusRule"
                                )["spec"]["groups"]
        result = check_rules(groups, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
        broken = orjson.loads(orjson.dumps(groups))
        broken[0]["rules"][-1]["expr"] = broken[0]["rules"][-1]["expr"].replace(
            "clamp_min(", "clamp_min((", 1)  # one unbalanced parenthesis
        result = check_rules(broken, tmp_path)
        assert result.returncode != 0
        assert "parse" in (result.stdout + result.stderr).lower()

    def test_drift_and_refused_calibration_alerts_fire_on_a_first_event(
        self, tmp_path: Path,
    ) -> None:
        """`promtool test rules` on the rendered rules: the counters' labelled series
        appear at their first event with value 1 (prometheus_client creates a child on
        its first inc), and that first event fires DetectorCalibrationRefused for 30
        minutes and DetectorDriftEvents for an hour, then they resolve;
        driftEventsPerHour is the number of events an hour that is still fine."""
        docs = render("--set", "prometheusRule.enabled=true",
                      "--set", "prometheusRule.driftEventsPerHour=1")
        groups: list[Doc] = one(docs, "PrometheusRule")["spec"]["groups"]
        rules = {r["alert"]: r for g in groups for r in g["rules"]}
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        series = 'namespace="default",job="rel-detector",pod="rel-detector-0"'
        drift = 'scope="global",moved="alert_rate",classification="broad"'

        def expected(alert: str, value: str, labels: dict[str, str]) -> list[Doc]:
            annotations = {k: v.replace("{{ $value | humanize }}", value)
                           .replace("{{ $labels.scope }}", labels.get("scope", ""))
                           .replace("{{ $labels.moved }}", labels.get("moved", ""))
                           .replace("{{ $labels.classification }}",
                                    labels.get("classification", ""))
                           for k, v in rules[alert]["annotations"].items()}
            return [{"exp_labels": {"severity": "warning", **labels},
                     "exp_annotations": annotations}]

        drift_labels = {"scope": "global", "moved": "alert_rate", "classification": "broad"}
        tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": "detector_calibrations_published_total{" + series
                           + ',outcome="refused"}', "values": "_x10 1x90"},
                {"series": "detector_drift_events_total{" + series + "," + drift + "}",
                 "values": "_x5 1x10 2x150"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "DetectorCalibrationRefused",
                 "exp_alerts": []},
                {"eval_time": "15m", "alertname": "DetectorCalibrationRefused",
                 "exp_alerts": expected("DetectorCalibrationRefused", "1", {})},
                {"eval_time": "50m", "alertname": "DetectorCalibrationRefused",
                 "exp_alerts": []},
                {"eval_time": "10m", "alertname": "DetectorDriftEvents",
                 "exp_alerts": []},  # one event: within driftEventsPerHour
                {"eval_time": "20m", "alertname": "DetectorDriftEvents",
                 "exp_alerts": expected("DetectorDriftEvents", "2", drift_labels)},
                {"eval_time": "70m", "alertname": "DetectorDriftEvents",
                 "exp_alerts": []},  # the first event left the hour: one in it
                {"eval_time": "100m", "alertname": "DetectorDriftEvents",
                 "exp_alerts": []},
            ],
        }]}
        (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
        result = subprocess.run([promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path,
                                capture_output=True, text=True, check=False, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_alert_rate_threshold_is_a_multiple_of_the_target_fpr(self) -> None:
        """DetectorAlertRateHigh fires above alertRateFactor x the target FPR of the
        detector's own configuration (scoring.target_fpr)."""
        docs = render("--set", "prometheusRule.enabled=true",
                      "--set", "prometheusRule.alertRateFactor=4",
                      "--set", "config.scoring.target_fpr=0.02")
        rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"]
                 for r in g["rules"]}
        expr = rules["DetectorAlertRateHigh"]["expr"]
        assert float(expr.rsplit(">", 1)[1]) == pytest.approx(0.08)


class TestNotes:
    def notes(self, *args: str) -> str:
        result = run_helm("install", "--dry-run=client", "rel", str(CHART), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    def test_idle_replicas_are_ready_standbys(self) -> None:
        """NOTES.txt says replicas beyond the partitions are ready standbys (as /readyz
        answers), not that they never become ready."""
        text = self.notes()
        assert "ready standbys" in text
        assert "never become ready" not in text
        assert "WARNING" not in text

    def test_warns_about_unreplicated_topics_and_names_the_extras(self) -> None:
        """one replica for created topics draws a warning; Strimzi topics and the
        PrometheusRule are named when enabled."""
        assert "WARNING: config.kafka.topic_replication_factor" in self.notes(
            "--set", "config.kafka.topic_replication_factor=1",
            "--set", "config.kafka.topic_min_insync_replicas=1")
        text = self.notes("-f", str(ALL_ENABLED))
        assert "KafkaTopics for Strimzi cluster my-cluster" in text
        assert "PrometheusRule rel-detector" in text
