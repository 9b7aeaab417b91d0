"""Operating over time: a drifting stream with a spam campaign, scored by the detector's
centroid under frozen, incremental, incremental + operator feedback and periodically
recalibrated variants, watched by detector.model.drift; and a stationary stream of 100,000
records that must raise no drift event.

Stream (per seed): 12 windows of 200 records. Normal traffic is movie reviews; from
window 2 drug reviews take a growing share of it (12.5, 25, 37.5 %) until the final
50/50 mix holds from window 5 (the shift's end) on. In windows 3 and 4, mid-drift, 20 %
of the records are a campaign: one real Guardian headline (scattertext) repeated with
one or two words replaced by real words of other headlines. The calibration is the
detector's: centroid of 1,000 movie reviews, threshold for 1 % FPR on 500 more.

The simulated operator labels 20 % of each window's alerts, at the window's end, with
the truth (reviews `normal`, campaign `anomaly`). Feedback applies the labels through
detector.model.labels (alert cache, LabelBook, `feedback.weight`); recalibration, after
every window, recalibrates from the most recent non-alerted, non-anomaly-labelled
comments, as many as `detector calibrate` needs for 1 % with half held out (600).
Drift monitoring is detector.model.drift with the default budget, one window = 200 records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.calibration.stats import fpr, min_holdout, similarity_profile, split, threshold_at_fpr
from detector.config import DriftSettings, FeedbackSettings
from detector.io.records import Position
from detector.model.baselines import Baseline, Baselines, Policy
from detector.model.centroid import Centroid
from detector.model.drift import DriftConfig, DriftMonitor, Observation, Reference
from detector.model.labels import AlertCache, CachedAlert, Label, LabelBook
from detector.model.reservoir import Ref, Reservoir

Floats = npt.NDArray[np.float64]
Embed = Callable[[list[str]], Floats]

TARGET_FPR = 0.01
MARGIN = 0.05
WINDOWS = 12
PER_WINDOW = 200
DRUG_SHARE = [0.0, 0.0, 0.125, 0.25, 0.375] + [0.5] * 7
SHIFT_START, SHIFT_END = 2, 5
CAMPAIGN_WINDOWS = (3, 4)
CAMPAIGN_SHARE = 0.2
LABELLED_SHARE = 0.2
STATIONARY_RECORDS = 100_000
SEEDS = [0, 1, 2, 3, 4]
FEEDBACK_WEIGHTS = [1.0, FeedbackSettings().weight, 100.0]


def campaign_base(headlines: list[str], seed_rows: Floats, embed: Embed, seed: int) -> str:
    """A random headline of 50-120 characters that the seed calibration alerts with the
    update margin to spare: a campaign the detector catches when it starts."""
    centroid, reference = calibrate(seed_rows, seed)
    candidates = [h for h in headlines if 50 <= len(h) <= 120]
    order = np.random.default_rng([seed, 3]).permutation(len(candidates))
    for start in range(0, len(order), 100):
        chunk = [candidates[int(i)] for i in order[start:start + 100]]
        sims = centroid.similarity(embed(chunk))
        hits = np.flatnonzero(sims < reference.threshold - MARGIN)
        if len(hits):
            return chunk[int(hits[0])]
    msg = "no headline scores below the threshold"
    raise SystemExit(msg)


def campaign_texts(base: str, headlines: list[str], n: int, rng: np.random.Generator
                   ) -> list[str]:
    """`n` distinct near-duplicates of `base`: 1-2 words replaced by real words taken
    from the other headlines."""
    vocabulary = sorted({w for h in headlines if h != base
                         for w in re.findall(r"[A-Za-z]{3,}", h)})
    words = base.split()
    out: dict[str, None] = {}
    while len(out) < n:
        edited = list(words)
        for pos in rng.choice(len(words), size=int(rng.integers(1, 3)), replace=False):
            edited[pos] = vocabulary[int(rng.integers(len(vocabulary)))]
        out[" ".join(edited)] = None
    return list(out)


@dataclass
class Stream:
    """Embedded windows: rows, and what each row is (normal / drug / campaign)."""

    windows: list[Floats] = field(default_factory=list)
    kinds: list[list[str]] = field(default_factory=list)


def build_stream(movie: list[str], drug: list[str], campaign: list[str], embed: Embed,
                 rng: np.random.Generator) -> Stream:
    stream = Stream()
    mi = di = ci = 0
    for w in range(WINDOWS):
        n_campaign = round(CAMPAIGN_SHARE * PER_WINDOW) if w in CAMPAIGN_WINDOWS else 0
        n_normal = PER_WINDOW - n_campaign
        n_drug = round(DRUG_SHARE[w] * n_normal)
        texts = (movie[mi:mi + n_normal - n_drug] + drug[di:di + n_drug]
                 + campaign[ci:ci + n_campaign])
        kinds = (["movie"] * (n_normal - n_drug) + ["drug"] * n_drug
                 + ["campaign"] * n_campaign)
        mi, di, ci = mi + n_normal - n_drug, di + n_drug, ci + n_campaign
        order = rng.permutation(len(texts))
        stream.windows.append(embed([texts[i] for i in order]))
        stream.kinds.append([kinds[i] for i in order])
    return stream


def judge(centroid: Centroid, rows: Floats, threshold: float, *, update: bool = True,
          start: int = 0) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """(similarities, accepted) of rows judged in order by the global baseline around
    `centroid`, as the daemon judges them (detector.model.baselines); accepted rows move
    `centroid` before the next row is judged."""
    baselines = Baselines(Baseline(None, centroid, Reservoir(1, centroid.dimension), threshold),
                          Policy(update=update, explain=0))
    verdicts = [baselines.judge(row, None, Ref("comments", 0, start + i))
                for i, row in enumerate(rows)]
    return (np.array([v.similarity for v in verdicts], dtype=np.float64),
            np.array([v.accepted for v in verdicts], dtype=np.bool_))


def calibrate(rows: Floats, seed: int) -> tuple[Centroid, Reference]:
    """The detector's calibration: centroid on half, threshold on the held-out half."""
    train, held = split(len(rows), 0.5 if len(rows) < 1500 else 1 / 3, seed)
    centroid = Centroid.from_vectors(rows[train])
    sims = centroid.similarity(rows[held])
    threshold = threshold_at_fpr(sims, TARGET_FPR)
    return centroid, Reference.from_calibration(threshold, len(held), fpr(sims, threshold),
                                                similarity_profile(sims, rows[held], seed))


def drift_config() -> DriftConfig:
    """The default drift settings, with one window per stream window."""
    settings = DriftSettings()
    return DriftConfig(window_records=PER_WINDOW, window_s=None,
                       false_alarm_budget=settings.false_alarm_budget,
                       budget_windows=settings.budget_windows,
                       sample_size=settings.sample_size)


def run_variant(name: str, stream: Stream, seed_rows: Floats, seed: int,
                weight: float | None = None) -> dict[str, Any]:
    """Score the stream window by window; FPR, campaign recall and drift events."""
    centroid, reference = calibrate(seed_rows, seed)
    config = drift_config()
    monitor = DriftMonitor(reference, config, seed=seed)
    cache = AlertCache(FeedbackSettings().alert_cache_size)
    book = LabelBook(weight or 1.0, FeedbackSettings().max_labels,
                     FeedbackSettings().alert_cache_size)
    rng = np.random.default_rng([seed, 7])
    eligible: list[Floats] = []
    fpr: list[float] = []
    recall: list[float | None] = []
    events: list[list[dict[str, Any]]] = []
    learnt: list[int] = []  # drug reviews the gated update accepted, per window
    taught: list[int] = []  # normal labels that taught the centroid, per window
    offset = 0
    for w, (rows, kinds) in enumerate(zip(stream.windows, stream.kinds, strict=True)):
        sims, updated = judge(centroid, rows, reference.threshold, update=name != "frozen",
                              start=offset)
        alerted = sims < reference.threshold
        is_normal = np.array([k != "campaign" for k in kinds])
        is_drug = np.array([k == "drug" for k in kinds])
        learnt.append(int((updated & is_drug).sum()))
        fpr.append(float(alerted[is_normal].mean()))
        recall.append(float(alerted[~is_normal].mean()) if (~is_normal).any() else None)
        window_events = []
        refs = [Position("comments", 0, offset + i) for i in range(len(rows))]
        for i, row in enumerate(rows):
            obs = Observation(float(sims[i]), bool(alerted[i]),
                              row if alerted[i] else None, asdict(refs[i]))
            window_events += monitor.observe(None, obs, float(offset + i))
            if alerted[i]:
                cache.remember(CachedAlert(refs[i], None, row, float(sims[i])))
        events.append([{"classification": e["low_scoring"]["classification"],
                        "moved": e["moved"]} for e in window_events])
        labelled = rng.permutation(np.flatnonzero(alerted))[
            : round(LABELLED_SHARE * int(alerted.sum()))]
        outcomes = []
        excluded: set[int] = set()  # labelled anomaly: left out of recalibration
        for i in labelled:
            label = Label(refs[i], None, "anomaly" if kinds[i] == "campaign" else "normal")
            if name == "feedback":
                outcomes.append(book.apply(label, centroid, alert=cache.find(label)))
            elif label.label == "anomaly":  # recalibration uses the labels only to
                excluded.add(int(i))  # exclude anomalies (detector.calibration.exclusions)
        taught.append(outcomes.count("taught"))
        offset += len(rows)
        if name == "recalibration":
            keep = [i for i in range(len(rows))
                    if not alerted[i] and i not in excluded]
            eligible.append(rows[keep])
            pool = np.concatenate(eligible)[-2 * min_holdout(TARGET_FPR):]
            if len(pool) >= 2 * min_holdout(TARGET_FPR):
                centroid, reference = calibrate(pool, seed + w)
                monitor.adopt(reference)
    return {"fpr": fpr, "recall": recall, "events": events, "learnt": learnt, "taught": taught,
            "precision": book.precision.value if name == "feedback" else None}


def stationary(movie_pool: Floats, seed_rows: Floats, seed: int) -> dict[str, Any]:
    """100,000 records drawn from held-out movie reviews, incremental centroid."""
    centroid, reference = calibrate(seed_rows, seed)
    config = drift_config()
    rng = np.random.default_rng([seed, 11])
    rows = movie_pool[rng.integers(len(movie_pool), size=STATIONARY_RECORDS)]
    frozen = centroid.similarity(rows)
    incremental, _ = judge(centroid, rows, reference.threshold)
    out: dict[str, Any] = {"records": len(rows), "pool": len(movie_pool)}
    for name, sims in (("frozen", frozen), ("incremental", incremental)):
        monitor = DriftMonitor(reference, config, seed=seed)
        alerted = sims < reference.threshold
        events = []
        for i in range(len(rows)):
            events += monitor.observe(None, Observation(float(sims[i]), bool(alerted[i]),
                                                        rows[i] if alerted[i] else None),
                                      float(i))
        out[name] = {"windows": monitor.windows_closed, "events": len(events),
                     "fpr": float(alerted.mean())}
    return out


def operating(movie: list[str], drug: list[str], headlines: list[str], embed: Embed
              ) -> dict[str, Any]:
    """Every variant on every seed; per-window means and the per-seed detail."""
    variants: dict[str, dict[str, Any]] = {}
    stationary_runs = []
    bases: list[str] = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        m = [movie[i] for i in rng.permutation(len(movie))]
        d = [drug[i] for i in rng.permutation(len(drug))]
        n_campaign = round(CAMPAIGN_SHARE * PER_WINDOW) * len(CAMPAIGN_WINDOWS)
        seed_rows = embed(m[:1500])
        base = campaign_base(headlines, seed_rows, embed, seed)
        campaign = campaign_texts(base, headlines, n_campaign, rng)
        bases.append(base)
        stream_movie = m[1500:1500 + WINDOWS * PER_WINDOW]
        stream = build_stream(stream_movie, d, campaign, embed, rng)
        runs = {"frozen": run_variant("frozen", stream, seed_rows, seed),
                "incremental": run_variant("incremental", stream, seed_rows, seed)}
        for weight in FEEDBACK_WEIGHTS:
            runs[f"feedback_w{weight:g}"] = run_variant("feedback", stream, seed_rows, seed,
                                                        weight)
        runs["recalibration"] = run_variant("recalibration", stream, seed_rows, seed)
        for name, run in runs.items():
            variants.setdefault(name, {"runs": []})["runs"].append(run)
        pool = embed(m[1500 + WINDOWS * PER_WINDOW:])
        stationary_runs.append(stationary(pool, seed_rows, seed))
    for v in variants.values():
        v["fpr"] = np.mean([r["fpr"] for r in v["runs"]], axis=0).tolist()
        v["campaign_recall"] = {str(w): float(np.mean([r["recall"][w] for r in v["runs"]]))
                                for w in CAMPAIGN_WINDOWS}
        v["first_event"] = [next((w for w, e in enumerate(r["events"]) if e), None)
                            for r in v["runs"]]
    return {"seeds": SEEDS, "windows": WINDOWS, "per_window": PER_WINDOW,
            "drug_share": DRUG_SHARE, "shift": [SHIFT_START, SHIFT_END],
            "campaign_windows": list(CAMPAIGN_WINDOWS), "campaign_share": CAMPAIGN_SHARE,
            "labelled_share": LABELLED_SHARE, "target_fpr": TARGET_FPR, "margin": MARGIN,
            "default_weight": FeedbackSettings().weight,
            "drift_config": DriftSettings().model_dump(), "variants": variants,
            "stationary": stationary_runs, "campaign_bases": bases}
