"""The calibration report: Markdown and JSON summaries plus PNG plots (matplotlib, when
installed; it is in the `dev` extra and not needed by the daemon)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from detector.calibration.artifact import Result
from detector.calibration.stats import roc_points


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
    if m.roc_auc is not None:
        lines += [f"- ROC AUC: {m.roc_auc:.3f}, PR AUC: {m.pr_auc:.3f}",
                  f"- recall at the target FPR: {m.recall_at_target_fpr:.2%}"]
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
