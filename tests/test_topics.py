"""Durable topics: the detector creates its topics replicated with min.insync.replicas,
and warns at start-up about existing output topics that one broker's loss can destroy."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from detector.config import KafkaSettings, load_settings
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from detector.io.kafka import check_durability, ensure_topics, new_topics
from tests.helpers import (
    NewTopic,
    detector_settings,
    running_detector,
    topic_configs,
    unique,
    wait_for,
)


class TestTopicSpecs:
    @pytest.mark.parametrize(("replicas", "explicit", "expected"),
                             [(3, None, "2"), (1, None, "1"), (2, None, "1"), (3, 3, "3")])
    def test_min_insync_replicas_follow_the_replication_factor(
            self, replicas: int, explicit: int | None, expected: str) -> None:
        """min.insync.replicas is one below the replication factor unless set; topic
        configs of the caller (compaction) are kept."""
        settings = KafkaSettings(topic_replication_factor=replicas,
                                 topic_min_insync_replicas=explicit)
        [spec] = new_topics(settings, {"t": {"cleanup.policy": "compact"}}, partitions=1)
        assert spec.replication_factor == replicas
        assert spec.topic_configs == {"min.insync.replicas": expected,
                                      "cleanup.policy": "compact"}

    def test_min_insync_above_the_replication_factor_is_refused(self) -> None:
        """a min.insync.replicas no partition can reach fails at load, naming the keys."""
        with pytest.raises(ConfigError, match="topic_min_insync_replicas"):
            load_settings(None, kafka={"topic_replication_factor": 1,
                                       "topic_min_insync_replicas": 2})


async def min_insync(bootstrap: str, topic: str) -> str:
    return (await topic_configs(bootstrap, topic))["min.insync.replicas"]


@pytest.mark.kafka
class TestOnTheBroker:
    async def test_created_topics_carry_min_insync_replicas(self, kafka_bootstrap: str) -> None:
        """ensure_topics creates with the configured min.insync.replicas and reports only
        the topics it made."""
        settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_partitions=2,
                                 topic_min_insync_replicas=1)
        name = unique("out")
        assert await ensure_topics(settings, {name: {}}) == [name]
        assert await ensure_topics(settings, {name: {}}) == []
        assert await min_insync(kafka_bootstrap, name) == "1"

    async def test_existing_unreplicated_topic_is_warned_about(
            self, kafka_bootstrap: str, new_topic: NewTopic) -> None:
        """an existing output topic with one replica is reported (and logged) with the
        fix; a missing topic is not the durability check's business."""
        existing = await new_topic()
        settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
        problems: dict[str, str] = {}

        async def reported() -> bool:  # a new topic's metadata reaches brokers eventually
            problems.update(await check_durability(settings, [existing, unique("missing")]))
            return bool(problems)

        await wait_for(reported, deadline_s=30, what="the durability warning")
        assert list(problems) == [existing]
        assert "replication factor 1" in problems[existing]
        assert await check_durability(settings, []) == {}

    async def test_daemon_warns_at_start_about_an_existing_unreplicated_output(
            self, kafka_bootstrap: str, new_topic: NewTopic,
            local_embedder: LocalEmbedder) -> None:
        """the alerts topic exists with one replica: the starting daemon warns about it,
        not about the dead-letter and scores topics it created itself."""
        source, alerts = await new_topic(), await new_topic()
        settings = detector_settings(kafka_bootstrap, source, alerts={"topic": alerts})
        with capture_logs() as logs:
            async with running_detector(settings, local_embedder):
                await wait_for(lambda: any(e["event"] == "detector starting" for e in logs),
                               what="the start-up log line")
        warned = [e["topic"] for e in logs if e["event"] == "output topic is not durable"]
        assert warned == [alerts]
