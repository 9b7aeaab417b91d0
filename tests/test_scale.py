"""Horizontal scale with real processes: three replicas share one centroid, one is killed,
the survivors take over its partitions, nothing is lost, and the merged centroid agrees
with a single replica that processed the same stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.config import load_settings
from detector.state.store import StateStore
from devtools.sample_data import stream
from tests.helpers import NewTopic, committed, produce, read_topic, unique, values, wait_for
from tests.procs import DetectorProcess

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
TOTAL = 6000
PARTITIONS = 6


def sections(bootstrap: str, topic: str, name: str, state_topic: str, replica: str
             ) -> dict[str, object]:
    return {
        "name": name,
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"{name}-group",
                  "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                  "commit_interval_ms": 300},
        "input": {"topic": topic},
        "embedding": {"concurrency": 1},
        "alerts": {"topic": f"{name}-alerts", "dead_letter_topic": f"{name}-dlq",
                   "scores_topic": f"{name}-scores"},
        "state": {"enabled": True, "topic": state_topic, "snapshot_interval_s": 1,
                  "replica_id": replica},
        "log": {"level": "warning"},
    }


async def merged_sum(bootstrap: str, name: str, state_topic: str) -> tuple[np.ndarray, float]:
    settings = load_settings("config/detector.yaml", name=name,
                             kafka={"bootstrap_servers": bootstrap},
                             state={"topic": state_topic})
    records = await StateStore(settings).load()
    total = sum((r.contribution.sum for r in records.values()), np.zeros(512))
    weight = sum(r.contribution.weight for r in records.values())
    return total, weight


async def wait_all_committed(bootstrap: str, group: str, topic: str, deadline_s: float
                             ) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        offsets = await committed(bootstrap, group, topic, PARTITIONS)
        if sum(o or 0 for o in offsets.values()) == TOTAL:
            return
        await asyncio.sleep(0.5)
    msg = f"not all {TOTAL} records committed in {deadline_s}s: {offsets}"
    raise AssertionError(msg)


def start_replicas(bootstrap: str, topic: str, name: str, state_topic: str, *, logs: Path,
                   count: int) -> list[DetectorProcess]:
    """`count` started replicas r0, r1, ... of one deployment, logging into `logs`."""
    return [DetectorProcess(sections(bootstrap, topic, name, state_topic, f"r{i}"),
                            logs / f"{name}-r{i}.log").start() for i in range(count)]


async def wait_all_ready(procs: list[DetectorProcess]) -> None:
    for proc in procs:
        await asyncio.to_thread(proc.wait_ready, 120)


class TestReplicas:
    async def test_three_replicas_one_killed_share_one_centroid(
        self, kafka_bootstrap: str, new_topic: NewTopic, tmp_path: Path
    ) -> None:
        """kill one of three replicas midway: no comment lost, survivors agree, and the
        merged centroid matches one replica processing the same stream."""
        topic = await new_topic(partitions=PARTITIONS)
        await produce(kafka_bootstrap, topic, [
            (str(i).encode(), orjson.dumps({"text": c.text}))
            for i, c in enumerate(stream(TOTAL, anomaly_rate=0.05, seed=77))])
        state_topic = unique("state")
        multi = unique("multi")
        procs = start_replicas(kafka_bootstrap, topic, multi, state_topic, logs=tmp_path, count=3)
        try:
            await wait_all_ready(procs)
            deadline = time.monotonic() + 120
            while sum(max(0.0, p.metric("detector_records_scored_total")) for p in procs) < 1500:
                assert time.monotonic() < deadline, "replicas made no progress"
                await asyncio.sleep(0.2)
            procs[0].kill()
            await wait_all_committed(kafka_bootstrap, f"{multi}-group", topic, 240)
            survivors = procs[1:]
            end = time.monotonic() + 30
            versions: list[float] = []
            while time.monotonic() < end:  # each applies the other's last publish
                versions = [p.metric("detector_centroid_version") for p in survivors]
                if versions[0] == versions[1]:
                    break
                await asyncio.sleep(0.3)
            assert versions[0] == versions[1], f"survivors disagree: {versions}"
            weights = [p.metric("detector_centroid_weight") for p in survivors]
            assert weights[0] == pytest.approx(weights[1], rel=1e-9)
            for proc in survivors:
                assert await asyncio.to_thread(proc.terminate) == 0, proc.tail()
        finally:
            for proc in procs:
                proc.kill()
        scores = values(await read_topic(kafka_bootstrap, f"{multi}-scores", at_least=TOTAL,
                                         deadline_s=60))
        seen = {(s["source"]["partition"], s["source"]["offset"]) for s in scores}
        assert len(seen) == TOTAL, "no comment lost"

        single = unique("single")
        proc = DetectorProcess(sections(kafka_bootstrap, topic, single, state_topic, "solo"),
                               tmp_path / "solo.log").start()
        try:
            await asyncio.to_thread(proc.wait_ready, 120)
            await wait_all_committed(kafka_bootstrap, f"{single}-group", topic, 240)
            assert await asyncio.to_thread(proc.terminate) == 0, proc.tail()
        finally:
            proc.kill()
        multi_sum, multi_weight = await merged_sum(kafka_bootstrap, multi, state_topic)
        single_sum, single_weight = await merged_sum(kafka_bootstrap, single, state_topic)
        cosine = multi_sum @ single_sum / np.linalg.norm(multi_sum) / np.linalg.norm(single_sum)
        print(f"replicas: cosine(multi, single)={cosine:.6f} "
              f"weights multi={multi_weight:.0f} single={single_weight:.0f}")
        assert cosine > 0.999
        assert multi_weight == pytest.approx(single_weight, rel=0.1)


class TestStandby:
    async def test_a_replica_beyond_the_partition_count_is_a_ready_standby(
        self, kafka_bootstrap: str, new_topic: NewTopic, tmp_path: Path
    ) -> None:
        """two replicas on a one-partition topic: both pass /readyz (a rollout does not
        wait forever on the idle one), and the standby takes over when the owner stops."""
        topic = await new_topic(partitions=1)
        name = unique("standby")
        state_topic = unique("state")
        procs = start_replicas(kafka_bootstrap, topic, name, state_topic, logs=tmp_path, count=2)
        try:
            await wait_all_ready(procs)
            await wait_for(lambda: sum(p.metric("detector_assigned_partitions")
                                       for p in procs) == 1,
                           deadline_s=30, what="the partition assigned once")
            owner, standby = sorted(procs, key=lambda p: -p.metric("detector_assigned_partitions"))
            status, body = standby.get("/readyz")
            assert (status, body.strip()) == (200, "ok: standby, no partitions assigned")
            status, body = owner.get("/readyz")
            assert (status, body.strip()) == (200, "ok")
            assert await asyncio.to_thread(owner.terminate) == 0, owner.tail()
            await produce(kafka_bootstrap, topic, normal_comments(50, seed=5))
            await wait_for(lambda: standby.metric("detector_records_scored_total") >= 50,
                           what="the standby taking over")
            assert standby.metric("detector_assigned_partitions") == 1
            assert await asyncio.to_thread(standby.terminate) == 0, standby.tail()
        finally:
            for proc in procs:
                proc.kill()


def normal_comments(n: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    return [(None, orjson.dumps({"text": c.text})) for c in stream(n, anomaly_rate=0.0, seed=seed)]


def lag_partitions(proc: DetectorProcess) -> set[str]:
    """The partitions this replica exports a consumer-lag gauge for."""
    _, body = proc.get("/metrics")
    return {line.split('partition="')[1].split('"')[0] for line in body.splitlines()
            if line.startswith("detector_consumer_lag{")}


class TestRebalance:
    async def test_lag_gauges_follow_the_assignment(
        self, kafka_bootstrap: str, new_topic: NewTopic, tmp_path: Path
    ) -> None:
        """a replica that gives a partition away stops reporting its lag, so the lag summed
        over replicas counts each partition once."""
        topic = await new_topic(partitions=2)
        for partition in (0, 1):
            await produce(kafka_bootstrap, topic, normal_comments(100, seed=9 + partition),
                          partition=partition)
        name, state_topic = unique("lag"), unique("state")
        first = start_replicas(kafka_bootstrap, topic, name, state_topic, logs=tmp_path,
                               count=1)[0]
        second: DetectorProcess | None = None
        try:
            await wait_all_ready([first])
            await wait_for(lambda: lag_partitions(first) == {"0", "1"}, what="lag gauges")
            second = DetectorProcess(sections(kafka_bootstrap, topic, name, state_topic, "r1"),
                                     tmp_path / f"{name}-r1.log").start()
            await wait_all_ready([second])
            await wait_for(lambda: (first.metric("detector_assigned_partitions"),
                                    second.metric("detector_assigned_partitions")) == (1, 1),
                           what="the partitions split")
            # each replica's gauge appears after its next fetch of the partition it owns
            await wait_for(lambda: len(lag_partitions(first)) == len(lag_partitions(second))
                           == 1, what="one lag gauge on each replica")
            kept, taken = lag_partitions(first), lag_partitions(second)
            assert kept | taken == {"0", "1"}, f"each partition reported once: {kept}, {taken}"
        finally:
            for proc in (first, second):
                if proc is not None:
                    proc.kill()
