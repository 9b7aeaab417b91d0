"""Centroid snapshots in the compacted state topic survive a restart exactly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from detector.embedders.local import LocalEmbedder
from detector.sample_data import stream
from detector.state import StateStore
from tests.helpers import (
    RecordingEmbedder,
    detector_settings,
    metric,
    produce,
    running_detector,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka
NewTopic = Callable[..., Awaitable[str]]


class TestSnapshots:
    async def test_restart_resumes_the_centroid_it_stopped_with(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """the centroid saved at shutdown is loaded bit-for-bit by the next start."""
        topic = await new_topic()
        settings = detector_settings(kafka_bootstrap, topic, name=unique("det"),
                                     state={"enabled": True, "topic": unique("state"),
                                            "snapshot_interval_s": 3600})
        await produce(kafka_bootstrap, topic, [
            (None, orjson.dumps({"text": c.text})) for c in stream(120, anomaly_rate=0.0)])
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 120,
                           what="the stream scored")
            learned_version = metric(det.metrics, "detector_centroid_version")
        assert learned_version > 0, "normal comments updated the centroid"
        first = await StateStore(settings).load()
        assert first is not None
        assert first.centroid.version == learned_version

        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="assignment")
            assert metric(det.metrics, "detector_centroid_version") == learned_version
            assert metric(det.metrics, "detector_centroid_weight") == first.centroid.weight
        second = await StateStore(settings).load()
        assert second is not None
        np.testing.assert_array_equal(second.centroid.sum, first.centroid.sum)
        assert second.centroid.weight == first.centroid.weight

    async def test_state_topic_is_compacted(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """the detector creates its state topic with cleanup.policy=compact."""
        settings = detector_settings(kafka_bootstrap, await new_topic(),
                                     state={"enabled": True, "topic": unique("state")})
        await StateStore(settings).ensure_topic()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.state.topic)])
            entries = {e[0]: e[1] for e in response.resources[0][4]}
        finally:
            await admin.close()
        assert entries["cleanup.policy"] == "compact"
