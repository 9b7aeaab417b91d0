"""The whole pipeline against a real Kafka broker with the real local model."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from detector.commands import run as app
from detector.config import Settings
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from detector.model.reservoir import Ref
from detector.operating import startup
from devtools.sample_data import stream
from tests.helpers import (
    NewTopic,
    RecordingEmbedder,
    committed,
    detector_settings,
    metric,
    produce,
    read_topic,
    running_detector,
    values,
    wait_for,
)

pytestmark = pytest.mark.kafka


def comment_value(i: int, text: str) -> bytes:
    return orjson.dumps({"id": f"c{i}", "text": text})


async def expected_similarities(embedder: LocalEmbedder, texts: list[str],
                                settings: Settings) -> np.ndarray:
    """Score the texts directly, in order, from the start the daemon makes (the seed's
    centroid, its threshold following the centroid), exactly as the daemon should."""
    state = await startup.initial_state(settings, embedder)
    baselines = state.baselines(settings, "")
    vectors = np.concatenate([embedder.embed_sync(texts[i:i + 10])
                              for i in range(0, len(texts), 10)])
    return np.array([baselines.judge(row, None, Ref("direct", 0, i)).similarity
                     for i, row in enumerate(vectors)])


class TestCleanRun:
    async def test_every_comment_scored_once_and_alerts_match_direct_scoring(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """1,000 comments with planted anomalies: each scored exactly once; the alerts topic
        holds exactly the comments below the threshold, keyed like the input."""
        topic = await new_topic(partitions=1)
        comments = stream(1000, anomaly_rate=0.05, seed=11)
        assert 30 <= sum(c.anomalous for c in comments) <= 70
        await produce(kafka_bootstrap, topic, [
            (f"key-{i}".encode(), comment_value(i, c.text)) for i, c in enumerate(comments)])
        settings = detector_settings(kafka_bootstrap, topic)
        recorder = RecordingEmbedder(local_embedder)
        async with running_detector(settings, recorder) as det:
            scores_topic = settings.alerts.scores_topic
            assert scores_topic is not None
            scores = await read_topic(kafka_bootstrap, scores_topic, at_least=1000)
            await wait_for(lambda: metric(det.metrics, "detector_alerts_total") > 0,
                           what="alerts acknowledged")
        offsets = sorted(v["source"]["offset"] for v in values(scores))
        assert offsets == list(range(1000)), "each input offset scored exactly once"
        assert max(recorder.sizes) <= 10
        assert sum(recorder.sizes) == 300 + 1000, "seed file plus each comment embedded once"

        # scoring.threshold auto: the threshold the daemon derived from the seed, exported
        threshold = metric(det.metrics, "detector_threshold")
        assert metric(det.metrics, "detector_threshold_calibrated") == 1
        assert metric(det.metrics, "detector_threshold_source", {"source": "seed"}) == 1
        direct = await expected_similarities(local_embedder, [c.text for c in comments],
                                             settings)
        by_offset = {v["source"]["offset"]: v for v in values(scores)}
        daemon = np.array([by_offset[i]["similarity"] for i in range(1000)])
        np.testing.assert_allclose(daemon, direct, atol=2e-3)
        # the threshold follows the centroid: each comment is judged by the one in force
        # when it was scored, which its score record carries
        applied = np.array([by_offset[i]["threshold"] for i in range(1000)])
        assert applied[-1] == threshold  # the live gauge is the last one applied
        assert np.ptp(applied) < 0.05  # learning on a stationary stream barely moves it

        alerts = await read_topic(kafka_bootstrap, settings.alerts.topic,
                                  at_least=int((daemon < applied).sum()))
        alerted = {v["source"]["offset"] for v in values(alerts)}
        assert alerted == {i for i in range(1000) if daemon[i] < applied[i]}
        planted = {i for i, c in enumerate(comments) if c.anomalous}
        assert len(planted & alerted) >= 0.9 * len(planted), "most planted anomalies caught"
        for record in alerts:
            body = orjson.loads(record.value)
            offset = body["source"]["offset"]
            assert record.key == f"key-{offset}".encode()
            assert body["schema"] == "detector.alert/v2"
            assert body["text"] == comments[offset].text
            assert body["id"] == f"c{offset}"
            assert body["similarity"] < body["threshold"] == applied[offset]
            assert set(body) == {"schema", "id", "text", "similarity", "threshold", "source",
                                 "centroid", "model", "detector", "detected_at", "method",
                                 "centroid_similarity", "baseline", "nearest", "calibration"}
            assert body["calibration"] is None  # started from the seed file
            assert body["centroid_similarity"] == body["similarity"]  # method centroid
            assert len(body["nearest"]) == 3
            assert body["model"] == {"name": "use-multilingual-v3", "dimension": 512}
        group = await committed(kafka_bootstrap, settings.kafka.group_id, topic)
        assert group == {0: 1000}


class TestBatching:
    async def test_a_lone_comment_is_alerted_within_linger_plus_embed_time(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """a single comment is not held back waiting for a full batch."""
        topic = await new_topic()
        settings = detector_settings(kafka_bootstrap, topic, embedding={"linger_ms": 200})
        recorder = RecordingEmbedder(local_embedder)
        async with running_detector(settings, recorder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_ready") == 1, what="assignment")
            recorder.sizes.clear()  # forget the seed file's batches
            recorder.seconds.clear()
            started = time.monotonic()
            await produce(kafka_bootstrap, topic, [(b"k", comment_value(0, "asdfghjkl zxcvbnm"))])
            await wait_for(lambda: metric(det.metrics, "detector_alerts_total") == 1,
                           deadline_s=30, what="the alert")
            elapsed = time.monotonic() - started
        assert recorder.sizes == [1]
        # linger + embed time, plus one broker round trip each way for produce and alert
        budget = 0.2 + recorder.seconds[0] + 1.0
        assert elapsed <= budget, f"alert took {elapsed:.2f}s, budget {budget:.2f}s"


class TestRestart:
    async def test_restart_mid_stream_loses_nothing_and_commits_trail_outputs(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """stop the detector mid-stream and start it again: every comment is scored, and
        the offset committed at the stop never runs ahead of what was published."""
        topic = await new_topic(partitions=2)
        comments = stream(600, anomaly_rate=0.1, seed=3)
        await produce(kafka_bootstrap, topic, [
            (f"k{i}".encode(), comment_value(i, c.text)) for i, c in enumerate(comments)])
        # a reorder window of 4 batches, so the drain at the stop leaves most of the 600
        settings = detector_settings(kafka_bootstrap, topic, embedding={"reorder_window": 4})
        scores_topic = settings.alerts.scores_topic
        assert scores_topic is not None
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") >= 200,
                           what="part of the stream")
        first = await committed(kafka_bootstrap, settings.kafka.group_id, topic, partitions=2)
        assert sum(o or 0 for o in first.values()) < 600, "stopped mid-stream"
        published = values(await read_topic(kafka_bootstrap, scores_topic, at_least=1,
                                             deadline_s=10))
        seen = {(v["source"]["partition"], v["source"]["offset"]) for v in published}
        for partition, offset in first.items():
            for o in range(offset or 0):
                assert (partition, o) in seen, "committed offset ran ahead of published output"

        async with running_detector(settings, RecordingEmbedder(local_embedder)):
            everything = await read_topic(kafka_bootstrap, scores_topic, at_least=600)
        got = {(v["source"]["partition"], v["source"]["offset"]) for v in values(everything)}
        final = await committed(kafka_bootstrap, settings.kafka.group_id, topic, partitions=2)
        assert sum(o or 0 for o in final.values()) == 600
        expected = {(p, o) for p, end in final.items() for o in range(end or 0)}
        assert got == expected, "no comment missing after the restart"


class TestDeadLetters:
    async def test_each_bad_record_lands_in_the_dlq_with_its_reason(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """bad records are dead-lettered with a reason and the daemon keeps consuming."""
        topic = await new_topic()
        bad = [
            (b"not json at all", "invalid_json"),
            (b"\xff\xfe\xfd", "invalid_utf8"),
            (b'{"body": "no text field"}', "missing_text"),
            (b'{"text": ""}', "empty_text"),
            (b'{"text": "' + b"word " * 20000 + b'"}', "too_long"),
            (None, "missing_value"),
        ]
        settings = detector_settings(kafka_bootstrap, topic)
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            await produce(kafka_bootstrap, topic, [(f"b{i}".encode(), v)
                                                   for i, (v, _) in enumerate(bad)])
            letters = await read_topic(kafka_bootstrap, settings.alerts.dead_letter_topic,
                                       at_least=len(bad))
            await produce(kafka_bootstrap, topic, [(b"good", comment_value(1, "The blender works "
                                                                            "great."))])
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 1,
                           what="a good comment after the bad ones")
            assert not det.task.done()
        reasons = {r.key: orjson.loads(r.value)["reason"] for r in letters}
        assert reasons == {f"b{i}".encode(): reason for i, (_, reason) in enumerate(bad)}
        for r in letters:
            body = orjson.loads(r.value)
            assert body["schema"] == "detector.dead-letter/v1"
            assert body["error"]
        group = await committed(kafka_bootstrap, settings.kafka.group_id, topic)
        assert group == {0: len(bad) + 1}


class TestExactlyOnce:
    async def test_transactions_publish_outputs_and_offsets_together(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """delivery exactly_once: a read_committed reader sees every output once and the
        group offsets move with the transactions."""
        topic = await new_topic(partitions=2)
        comments = stream(300, anomaly_rate=0.1, seed=9)
        await produce(kafka_bootstrap, topic, [
            (f"k{i}".encode(), comment_value(i, c.text)) for i, c in enumerate(comments)]
            + [(b"bad", b"not json")])
        settings = detector_settings(kafka_bootstrap, topic, delivery="exactly_once",
                                     kafka={"transactional_id": f"txn-{topic}"})
        scores_topic = settings.alerts.scores_topic
        assert scores_topic is not None
        async with running_detector(settings, RecordingEmbedder(local_embedder)) as det:
            scores = await read_topic(kafka_bootstrap, scores_topic, at_least=300)
            await wait_for(lambda: metric(det.metrics, "detector_dead_letters_total",
                                          {"reason": "invalid_json"}) == 1, what="dead letter")
        keys = sorted((v["source"]["partition"], v["source"]["offset"]) for v in values(scores))
        assert len(keys) == len(set(keys)) == 300
        expected_alerts = sum(1 for v in values(scores) if v["anomaly"])
        alerts = await read_topic(kafka_bootstrap, settings.alerts.topic,
                                  at_least=expected_alerts, deadline_s=10)
        alert_keys = [(r.partition, r.key) for r in alerts]
        assert len(alerts) == expected_alerts == len(set(alert_keys))
        letters = await read_topic(kafka_bootstrap, settings.alerts.dead_letter_topic,
                                   at_least=1, deadline_s=10)
        assert len(letters) == 1
        final = await committed(kafka_bootstrap, settings.kafka.group_id, topic, partitions=2)
        assert sum(o or 0 for o in final.values()) == 301


class TestStartup:
    async def test_missing_input_topic_is_a_clear_error(
        self, kafka_bootstrap: str, local_embedder: LocalEmbedder
    ) -> None:
        """a missing input topic stops the start with a message naming it."""
        settings = detector_settings(kafka_bootstrap, "no-such-topic-here")
        with pytest.raises(ConfigError, match="no-such-topic-here"):
            await app.run(settings, embedder=RecordingEmbedder(local_embedder))
