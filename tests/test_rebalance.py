"""A replica that needs longer than the session timeout to finish the partitions it loses
stays in its group: the rebalance waits for it (`kafka.rebalance_timeout_ms`, by default
shutdown_timeout_s + 10 s) instead of expelling it and rebalancing again when it rejoins.

aiokafka's own default rebalance timeout is the session timeout. With it, a replica
draining its revoked partitions for longer than that was dropped from the group, the
newcomer took every partition, and the dropped replica's rejoin revoked them again: under
load the group kept rebalancing (seen as a stalled three-replica test in CI)."""

from __future__ import annotations

import orjson
import pytest

from detector.config import load_settings
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from devtools.sample_data import stream
from tests.helpers import (
    NewTopic,
    RecordingEmbedder,
    detector_settings,
    metric,
    produce,
    running_detector,
    unique,
    wait_for,
)

PARTITIONS = 4


class TestRebalanceTimeout:
    def test_the_default_covers_the_drain_and_a_shorter_one_is_refused(self) -> None:
        """null: shutdown_timeout_s + 10 s, never below the session timeout; a value
        shorter than shutdown_timeout_s fails at load, naming both keys."""
        assert load_settings(None, kafka={"session_timeout_ms": 6000}).rebalance_timeout_ms(
            ) == 30_000
        assert load_settings(None, kafka={"session_timeout_ms": 60_000}).rebalance_timeout_ms(
            ) == 60_000
        assert load_settings(None, shutdown_timeout_s=45).rebalance_timeout_ms() == 55_000
        assert load_settings(None, kafka={"rebalance_timeout_ms": 25_000}
                             ).rebalance_timeout_ms() == 25_000
        with pytest.raises(ConfigError, match=r"rebalance_timeout_ms.*shutdown_timeout_s"):
            load_settings(None, kafka={"rebalance_timeout_ms": 5_000})

    @pytest.mark.kafka
    async def test_a_replica_draining_longer_than_the_session_stays_in_the_group(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """replica a has a full window in flight (16 calls of 0.8 s, about 13 s to finish,
        twice the 6 s session timeout) when b joins: b's first assignment is its half of
        the partitions, not all of them, because a was waited for."""
        topic = await new_topic(partitions=PARTITIONS)
        await produce(kafka_bootstrap, topic, [
            (None, orjson.dumps({"text": c.text})) for c in stream(2000, seed=5)])
        group = unique("g")
        kafka = {"group_id": group, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
        a_settings = detector_settings(kafka_bootstrap, topic, kafka=kafka)
        b_settings = detector_settings(kafka_bootstrap, topic, kafka=kafka)
        assert a_settings.rebalance_timeout_ms() == 30_000
        slow = RecordingEmbedder(local_embedder, delay_s=0.8)  # a slow provider
        async with running_detector(a_settings, slow) as a:
            await wait_for(lambda: metric(a.metrics, "detector_assigned_partitions")
                           == PARTITIONS, what="a owning every partition")
            await wait_for(lambda: metric(a.metrics, "detector_queued_batches") >= 16,
                           what="a full reorder window in flight")
            async with running_detector(b_settings, slow) as b:
                first: list[float] = []

                def b_assigned() -> bool:
                    owned = metric(b.metrics, "detector_assigned_partitions")
                    if owned:
                        first.append(owned)
                    return bool(owned)

                await wait_for(b_assigned, deadline_s=90, what="b's first assignment")
                assert first[0] == PARTITIONS // 2, "a was expelled: b took every partition"
                await wait_for(lambda: metric(a.metrics, "detector_assigned_partitions")
                               == PARTITIONS // 2, deadline_s=30, what="a's half")
