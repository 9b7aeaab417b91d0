"""A long stationary stream through the daemon's run path, learning on, default settings
(seed start, local model): alerts per 1,000, the threshold in force and the share the
centroid learnt from, by tenth of the stream (`python -m bench.stationary 100000`)."""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import orjson

from detector.embedders import build_embedder
from devtools.broker import LocalKafka
from devtools.sample_data import stream
from tests.helpers import (
    create_topic,
    detector_settings,
    metric,
    produce,
    read_topic,
    running_detector,
    values,
    wait_for,
)


async def run(bootstrap: str, n: int) -> None:
    topic = "stationary"
    await create_topic(bootstrap, topic)
    comments = stream(n, anomaly_rate=0.0, seed=123)
    for lo in range(0, n, 5000):
        await produce(bootstrap, topic, [
            (None, orjson.dumps({"id": f"c{i}", "text": c.text}))
            for i, c in enumerate(comments[lo:lo + 5000], lo)])
    settings = detector_settings(bootstrap, topic)
    started = time.monotonic()
    async with running_detector(settings, build_embedder(settings)) as det:
        await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") >= n,
                       deadline_s=3600, what="all scored")
    seconds = time.monotonic() - started
    scores = values(await read_topic(bootstrap, settings.alerts.scores_topic or "",
                                     at_least=n, deadline_s=600))
    scores.sort(key=lambda s: s["source"]["offset"])
    alerts = np.array([s["anomaly"] for s in scores])
    learnt = np.array([s["centroid_updated"] for s in scores])
    tenth = n // 10
    starts = range(0, n, tenth)
    print(f"records {len(scores)}, {seconds:.0f} s")
    print("alerts per 1,000:", [round(1000 * float(alerts[i:i + tenth].mean()), 1)
                                 for i in starts])
    print("threshold:", [round(float(scores[i]["threshold"]), 4) for i in starts])
    print("learnt share:", [round(float(learnt[i:i + tenth].mean()), 3) for i in starts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("records", type=int, nargs="?", default=100_000)
    args = parser.parse_args()
    with LocalKafka() as kafka:
        asyncio.run(run(kafka.bootstrap_servers, args.records))


if __name__ == "__main__":
    main()
