"""Fault tests with real detector processes on a real broker: kill -9 at random moments."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from devtools.sample_data import stream
from tests.helpers import NewTopic, committed, produce, read_topic, unique, values
from tests.procs import DetectorProcess

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
TOTAL = 20_000
PARTITIONS = 3


def sections(bootstrap: str, topic: str, delivery: str) -> dict[str, object]:
    return {
        "delivery": delivery,
        "kafka": {"bootstrap_servers": bootstrap, "group_id": unique("chaos"),
                  "group_instance_id": "chaos-1", "session_timeout_ms": 6000,
                  "heartbeat_interval_ms": 1000, "commit_interval_ms": 300,
                  "transactional_id": unique("txn")},
        "input": {"topic": topic},
        "alerts": {"topic": unique("alerts"), "dead_letter_topic": unique("dlq"),
                   "scores_topic": unique("scores")},
        "state": {"enabled": False},
        "log": {"level": "warning"},
    }


class TestKill:
    @pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
    async def test_kill_9_ten_times_loses_nothing(
        self, kafka_bootstrap: str, new_topic: NewTopic, tmp_path: Path, delivery: str
    ) -> None:
        """kill -9 the detector 10+ times during 20,000 comments, restarting it each time:
        every input offset is scored; with exactly_once each alert is committed once."""
        topic = await new_topic(partitions=PARTITIONS)
        comments = stream(TOTAL, anomaly_rate=0.05, seed=42)
        await produce(kafka_bootstrap, topic, [
            (f"k{i}".encode(), orjson.dumps({"id": i, "text": c.text}))
            for i, c in enumerate(comments)])
        conf = sections(kafka_bootstrap, topic, delivery)
        group = str(conf["kafka"]["group_id"])  # type: ignore[index]
        rng = random.Random(7)
        kills = 0
        log = tmp_path / "detector.log"
        while kills < 10:
            proc = DetectorProcess(conf, log).start()
            proc.wait_ready()
            await asyncio.sleep(rng.uniform(0.2, 2.0))  # the random moment of the kill
            proc.kill()
            kills += 1
        done = await committed(kafka_bootstrap, group, topic, PARTITIONS)
        assert sum(o or 0 for o in done.values()) < TOTAL, "the kills happened mid-stream"

        final = DetectorProcess(conf, log).start()
        try:
            final.wait_ready()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                offsets = await committed(kafka_bootstrap, group, topic, PARTITIONS)
                if sum(o or 0 for o in offsets.values()) == TOTAL:
                    break
                await asyncio.sleep(0.5)
            assert final.terminate() == 0, final.tail()
        finally:
            final.kill()
        offsets = await committed(kafka_bootstrap, group, topic, PARTITIONS)
        assert sum(o or 0 for o in offsets.values()) == TOTAL, final.tail()

        alerts_topic = str(conf["alerts"]["topic"])  # type: ignore[index]
        scores_topic = str(conf["alerts"]["scores_topic"])  # type: ignore[index]
        scores = values(await read_topic(kafka_bootstrap, scores_topic, at_least=TOTAL,
                                         deadline_s=120))
        scored = Counter((s["source"]["partition"], s["source"]["offset"]) for s in scores)
        expected = {(p, o) for p, end in offsets.items() for o in range(end or 0)}
        assert set(scored) == expected, "every input offset appears in the scores topic"
        if delivery == "exactly_once":
            assert max(scored.values()) == 1, "read_committed sees each score once"
            wanted = {(s["source"]["partition"], s["source"]["offset"])
                      for s in scores if s["anomaly"]}
            alerts = values(await read_topic(kafka_bootstrap, alerts_topic,
                                             at_least=len(wanted), deadline_s=60))
            got = Counter((a["source"]["partition"], a["source"]["offset"]) for a in alerts)
            assert set(got) == wanted
            assert max(got.values()) == 1, "each expected alert exactly once"
        print(f"{delivery}: kills={kills} scored={len(scored)} "
              f"duplicates={sum(scored.values()) - len(scored)} lost={len(expected - set(scored))}")
