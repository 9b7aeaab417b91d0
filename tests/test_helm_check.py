"""The chart runs `detector check` first: as the daemon's init container when
`check.initContainer` is on (off by default), and always before the calibration Job and
the recalibration CronJob; its arguments parse with the real CLI."""

from __future__ import annotations

from detector.cli import build_parser
from tests.helpers import CHART, Doc, one, pod_spec, render

ALL_ENABLED = str(CHART / "ci/all-enabled-values.yaml")


def check_container(spec: Doc) -> Doc:
    [container] = [c for c in spec.get("initContainers", []) if c["name"] == "check"]
    found: Doc = container
    return found


class TestCheckInitContainer:
    def test_off_by_default(self) -> None:
        """the default daemon pod has no init container."""
        assert "initContainers" not in pod_spec(render(), "StatefulSet")

    def test_the_daemon_checks_first_when_asked(self) -> None:
        """check.initContainer: the pod runs `detector check` with the daemon's config,
        environment, mounts and security context; check.offline adds --offline."""
        docs = render("--set", "check.initContainer=true", "--set", "check.offline=true")
        spec = pod_spec(docs, "StatefulSet")
        check = check_container(spec)
        main = spec["containers"][0]
        args = build_parser().parse_args(check["args"])
        assert (args.command, args.config, args.offline) == (
            "check", "/etc/detector/detector.yaml", True)
        assert check["image"] == main["image"]
        assert check["volumeMounts"] == main["volumeMounts"]
        assert check["securityContext"] == main["securityContext"]

    def test_calibration_job_and_cronjob_check_first(self) -> None:
        """the calibrate Job and the recalibration CronJob start with the check."""
        docs = render("-f", ALL_ENABLED)
        job = check_container(pod_spec(docs, "Job"))
        assert build_parser().parse_args(job["args"]).command == "check"
        cron = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert build_parser().parse_args(check_container(cron)["args"]).offline is False
