"""The calibration report: Markdown and JSON summaries plus PNG plots (matplotlib, when
installed; it is in the `dev` extra and not needed by the daemon)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from detector.calibration.artifact import CalibrationArtifact, Result
from detector.calibration.sections import FprPromise
from detector.calibration.stats import roc_points


def fpr_range(promised: FprPromise | None) -> str:
    """A threshold's expected false-positive rate and its 90 % interval, as text."""
    if promised is None:
        return "-"
    low, high = promised.fpr_interval
    return f"{promised.expected_fpr:.2%} (90 % interval {low:.2%} .. {high:.2%})"


def global_promise(artifact: CalibrationArtifact) -> str | None:
    """What the global threshold promises, as text (None: not a target-FPR selection or
    an artifact made before issue 22)."""
    p = artifact.metrics.threshold_fpr
    if p is None:
        return None
    return (f"{fpr_range(p)}; rank {p.rank} of {p.holdout} held-out normals at "
            f"confidence {p.confidence:g}")


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One key's line of the summary and the report."""

    key: str
    holdout: int
    origin: str  # own, pooled or global
    threshold: float | None
    fpr: str


def key_rows(artifact: CalibrationArtifact) -> list[KeyRow]:
    """Per key baseline: held-out count, where its threshold comes from, the threshold
    applied and its expected FPR range (a pooled key shows the pooled threshold's, which
    holds over all keys' held-out normals together, not for the key alone)."""
    keys = artifact.keys
    if keys is None:
        return []
    rows = []
    for key, b in sorted(keys.baselines.items()):
        origin = b.threshold_origin or ("own" if b.threshold is not None else "pooled")
        threshold = (b.threshold if origin == "own" else keys.pooled_threshold
                     if origin == "pooled" else artifact.threshold)
        rows.append(KeyRow(key, b.counts.holdout, origin, threshold, fpr_range(b.threshold_fpr)))
    return rows


def key_table(rows: list[KeyRow]) -> list[str]:
    """The per-key rows as a Markdown table."""
    out = ["| key | held-out | threshold from | threshold | expected FPR |",
           "|---|---:|---|---:|---|"]
    for r in rows:
        threshold = "-" if r.threshold is None else f"{r.threshold:.4f}"
        out.append(f"| {r.key} | {r.holdout} | {r.origin} | {threshold} | {r.fpr} |")
    return out


def write_report(result: Result, directory: Path) -> list[Path]:
    """Write report.json, report.md and the plots; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    a = result.artifact
    written = [directory / "report.json", directory / "report.md"]
    body = {name: value for name, value in a.to_json().items()
            if name in ("threshold", "method", "target", "model", "counts", "metrics",
                        "created_at")}
    written[0].write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    plots = _plots(result, directory)
    m = a.metrics
    lines = [
        "# Calibration report", "",
        f"- model: `{a.model.name}` ({a.model.dimension} dimensions)",
        f"- samples: {a.counts.train} train, {a.counts.holdout} held-out normals, "
        f"{a.counts.anomalies} labelled anomalies",
        f"- method: `{a.method}` (target {a.target:.4g})",
        f"- threshold: **{a.threshold:.4f}** (bootstrap 95% CI of the target-FPR threshold: "
        f"{m.threshold_ci95[0]:.4f} .. {m.threshold_ci95[1]:.4f})",
        f"- false-positive rate on held-out normals: {m.holdout_fpr:.2%}",
    ]
    promised = global_promise(a)
    if promised is not None:
        lines.append(f"- expected false-positive rate of the threshold: {promised}")
    if a.reference is not None:
        lines.append(f"- reference sample: {a.reference.count} held-out normals kept in "
                     f"the artifact")
    if m.roc_auc is not None:
        lines += [f"- ROC AUC: {m.roc_auc:.3f}, PR AUC: {m.pr_auc:.3f}",
                  f"- recall at the target FPR: {m.recall_at_target_fpr:.2%}"]
    if a.keys is not None:
        pooled = a.keys.pooled_threshold
        lines += ["", f"## Per-key thresholds (`{a.keys.field}`)", "",
                  "A key's own threshold when its held-out normals support one, else the "
                  "pooled key threshold"
                  + ("" if pooled is None else
                     f" ({pooled:.4f}, expected FPR {fpr_range(a.keys.pooled_fpr)} over "
                     f"all keys' held-out normals)")
                  + ", else the global one.", "", *key_table(key_rows(a))]
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    if not plots:
        lines.append("(no plots: matplotlib is not installed)")
    written[1].write_text("\n".join(lines) + "\n")
    return written + plots


def _plots(result: Result, directory: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-0.2, 1.0, 61).tolist()
    ax.hist(result.holdout_sims, bins=bins, alpha=0.6, label="held-out normal", density=True)
    if len(result.anomaly_sims):
        ax.hist(result.anomaly_sims, bins=bins, alpha=0.6, label="anomalous", density=True)
    ax.axvline(result.artifact.threshold, color="k", linestyle="--",
               label=f"threshold {result.artifact.threshold:.3f}")
    ax.set_xlabel("cosine similarity to the centroid")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    out.append(directory / "similarity_hist.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    if len(result.anomaly_sims):
        fpr, tpr = roc_points(result.holdout_sims, result.anomaly_sims)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr,
                label=f"AUC {result.artifact.metrics.roc_auc:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(loc="lower right")
        fig.tight_layout()
        out.append(directory / "roc.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
    return out
