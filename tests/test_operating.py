"""Operating over time on a real broker: a calibration published on the state topic is
adopted by a running replica (and by the next start) while a broken one is refused; drift
events appear for a population shift and not for a stationary stream; `replay --compare`
reports the alerts a candidate artifact removes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.calibration.artifact import calibrate, load_artifact, save_artifact
from detector.commands.calibrate import publish
from detector.commands.compare import NO_KEY, compare
from detector.commands.replay import ReplayOptions
from detector.config import Settings
from detector.embedders.local import LocalEmbedder
from detector.model.centroid import Centroid
from detector.state.published import version_of
from tests.helpers import (
    NewTopic,
    RunningDetector,
    detector_settings,
    drug_comments,
    metric,
    metric_sum,
    produce,
    read_topic,
    running_detector,
    shop_comments,
    unique,
    values,
    wait_for,
)

pytestmark = pytest.mark.kafka


async def artifact(embedder: LocalEmbedder, path: Path, texts: list[str], *,
                   model: str | None = None) -> Path:
    """Calibrated on `texts` (70 % train, 30 % held out) at a 1 % target FPR."""
    vectors = (await embedder.embed(texts)).astype(np.float64)
    order = np.random.default_rng(0).permutation(len(texts))
    cut = int(len(texts) * 0.7)
    result = calibrate(vectors[order[:cut]], vectors[order[cut:]], None,
                       model=model or embedder.name, dimension=embedder.dimension,
                       target_fpr=0.01, bootstrap=20)
    save_artifact(result.artifact, path)
    return path


async def shop_and_mixed(embedder: LocalEmbedder, tmp_path: Path) -> tuple[Path, Path]:
    """The artifact of a shop-only stream, and the recalibration after drug reviews
    joined it (which no longer alerts them)."""
    shop = await artifact(embedder, tmp_path / "shop.json", shop_comments(1000, 1))
    mixed = await artifact(embedder, tmp_path / "mixed.json",
                           shop_comments(600, 2) + drug_comments(400, 3))
    return shop, mixed


def message(text: str, i: int) -> tuple[None, bytes]:
    return None, orjson.dumps({"id": f"c{i}", "text": text})


async def alert_share(embedder: LocalEmbedder, path: Path, texts: list[str]) -> float:
    art = load_artifact(path)
    sims = (await embedder.embed(texts)).astype(np.float64) @ np.asarray(
        Centroid.from_dict(art.centroid).vector)
    return float((sims < art.threshold).mean())


class TestPublishedCalibration:
    async def test_a_published_artifact_is_adopted_live_and_a_broken_one_refused(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Drug reviews alert under the shop artifact. An artifact of another model is
        published first and refused (the shop artifact stays in force); then the mixed
        artifact is published and the running replica adopts it: later drug reviews pass,
        alerts name the new version, and the next start begins from it."""
        shop, mixed = await shop_and_mixed(local_embedder, tmp_path)
        drugs = drug_comments(60, 21)
        assert await alert_share(local_embedder, shop, drugs[:30]) >= 0.8
        assert await alert_share(local_embedder, mixed, drugs[30:]) <= 0.2
        other = await artifact(local_embedder, tmp_path / "other.json",
                               shop_comments(1000, 4), model="another-model")
        topic = await new_topic()
        settings = detector_settings(
            kafka_bootstrap, topic, name=unique("det"),
            scoring={"calibration_file": shop},
            state={"enabled": True, "topic": unique("state"), "snapshot_interval_s": 0.5,
                   "replica_id": "r1"})
        old, new = version_of(load_artifact(shop)), version_of(load_artifact(mixed))
        first = [message(t, i) for i, t in enumerate(drugs[:30])]
        second = [message(t, 100 + i) for i, t in enumerate(drugs[30:])]
        async with running_detector(settings, local_embedder) as det:
            await produce(kafka_bootstrap, topic, first)
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 30,
                           what="first batch scored")
            assert await publish(settings, other) != old
            await wait_for(lambda: metric(det.metrics, "detector_calibrations_published_total",
                                          {"outcome": "refused"}) == 1, what="refusal")
            assert metric(det.metrics, "detector_calibration_info", {"version": old}) == 1
            assert await publish(settings, mixed) == new
            await wait_for(lambda: metric(det.metrics, "detector_calibrations_published_total",
                                          {"outcome": "adopted"}) == 1, what="adoption")
            assert metric(det.metrics, "detector_calibration_info", {"version": new}) == 1
            assert metric(det.metrics, "detector_threshold") == load_artifact(
                mixed).threshold
            await produce(kafka_bootstrap, topic, second)
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 60,
                           what="second batch scored")
        alerts = values(await read_topic(kafka_bootstrap, settings.alerts.topic,
                                         at_least=24))
        before = [a for a in alerts if int(a["id"][1:]) < 100]
        after = [a for a in alerts if int(a["id"][1:]) >= 100]
        assert len(before) >= 24
        assert {a["calibration"] for a in before} == {old}
        assert len(after) <= 6, f"{len(after)} drug reviews alerted after the adoption"
        assert {a["calibration"] for a in after} <= {new}

        async with running_detector(settings, local_embedder) as det:  # the next start
            await wait_for(lambda: det.task.done() or metric(
                det.metrics, "detector_calibration_info", {"version": new}) == 1,
                what="restart from the published artifact")
            assert not det.task.done()
            assert metric(det.metrics, "detector_threshold") == load_artifact(
                mixed).threshold


class TestDriftEvents:
    async def test_a_shift_raises_drift_events_and_a_stationary_stream_none(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Six windows of shop comments like the calibration's raise no event; a window of
        drug reviews raises a global drift event on the drift topic."""
        shop, _ = await shop_and_mixed(local_embedder, tmp_path)
        topic = await new_topic()
        settings = detector_settings(
            kafka_bootstrap, topic, scoring={"calibration_file": shop},
            alerts={"drift_topic": unique("drift")},
            drift={"enabled": True, "window_records": 100, "window_s": 3600})
        stationary = [message(t, i) for i, t in enumerate(shop_comments(600, 31))]
        shifted = [message(t, 1000 + i) for i, t in enumerate(drug_comments(100, 32))]
        async with running_detector(settings, local_embedder) as det:
            await produce(kafka_bootstrap, topic, stationary)
            await wait_for(lambda: metric(det.metrics, "detector_drift_windows_closed_total")
                           == 6, what="six stationary windows")
            assert sum(s.value for m in det.metrics.drift_events.collect()
                       for s in m.samples if s.name.endswith("_total")) == 0
            await produce(kafka_bootstrap, topic, shifted)
            await wait_for(lambda: metric(det.metrics, "detector_drift_windows_closed_total")
                           == 7, what="the shifted window")
        events = values(await read_topic(kafka_bootstrap, settings.alerts.drift_topic,
                                         at_least=1, deadline_s=30))
        assert len(events) == 1
        (event,) = events
        assert event["schema"] == "detector.drift/v1"
        assert event["scope"] == "global"
        assert event["window"]["index"] == 6
        assert event["window"]["records"] == 100
        assert "alert_rate" in event["moved"]
        assert event["alert_rate"]["observed"] > 0.5


class TestCompare:
    async def test_compare_reports_the_alerts_a_candidate_removes(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Against the shop artifact in force, the mixed candidate removes the drug
        reviews' alerts and adds (almost) none; examples name the removed comments."""
        shop, mixed = await shop_and_mixed(local_embedder, tmp_path)
        topic = await new_topic()
        items = ([message(t, i) for i, t in enumerate(shop_comments(40, 41))]
                 + [message(t, 100 + i) for i, t in enumerate(drug_comments(30, 42))])
        await produce(kafka_bootstrap, topic, items)
        settings: Settings = detector_settings(kafka_bootstrap, topic,
                                               scoring={"calibration_file": shop})
        report = await compare(settings, ReplayOptions(topic=topic, show_progress=False),
                               mixed, embedder=local_embedder)
        assert report["range"]["records"] == 70
        assert report["in_force"]["version"] == version_of(load_artifact(shop))
        assert report["candidate"]["version"] == version_of(load_artifact(mixed))
        assert report["in_force"]["alerts"] >= 24
        assert report["removed"]["count"] >= 20
        assert report["removed"]["by_key"] == {NO_KEY: report["removed"]["count"]}
        assert report["added"]["count"] <= 3
        assert all(int(e["id"][1:]) >= 100 for e in report["removed"]["examples"])
        assert len(report["removed"]["examples"]) == 5


class TestFeedback:
    async def test_normal_labels_change_the_next_scores_on_both_replicas(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Two replicas, one partition each, alert on drug reviews; an operator labels
        every alert normal. Each replica applies the labels of its own alerts (and skips
        the other's), the increments reach the other replica through the state topic, and
        the next drug reviews score higher on both partitions."""
        shop, _ = await shop_and_mixed(local_embedder, tmp_path)
        topic = await new_topic(partitions=2)
        name, group = unique("det"), unique("g")
        outputs = {"topic": unique("alerts"), "dead_letter_topic": unique("dlq"),
                   "scores_topic": unique("scores")}
        feedback_topic, state_topic = unique("feedback"), unique("state")

        def replica(rid: str) -> Settings:
            return detector_settings(
                kafka_bootstrap, topic, name=name, alerts=outputs,
                kafka={"bootstrap_servers": kafka_bootstrap, "group_id": group,
                       "commit_interval_ms": 200},
                scoring={"calibration_file": shop},
                feedback={"enabled": True, "topic": feedback_topic, "weight": 50},
                state={"enabled": True, "topic": state_topic, "snapshot_interval_s": 0.5,
                       "replica_id": rid})

        a, b = replica("a"), replica("b")
        async with running_detector(a, local_embedder) as da, \
                running_detector(b, local_embedder) as db:
            await wait_for(lambda: metric(da.metrics, "detector_assigned_partitions") == 1
                           and metric(db.metrics, "detector_assigned_partitions") == 1,
                           deadline_s=120, what="one partition each")
            start = [metric(d.metrics, "detector_centroid_version") for d in (da, db)]
            for partition in (0, 1):
                await produce(kafka_bootstrap, topic, [
                    message(t, 1000 * partition + i)
                    for i, t in enumerate(drug_comments(10, 50 + partition))],
                    partition=partition)
            await wait_for(lambda: metric(da.metrics, "detector_records_scored_total") == 10
                           and metric(db.metrics, "detector_records_scored_total") == 10,
                           what="both partitions scored")
            alerts = values(await read_topic(kafka_bootstrap, a.alerts.topic, at_least=20))
            assert len(alerts) == 20
            await produce(kafka_bootstrap, feedback_topic, [
                (None, orjson.dumps({"schema": "detector.feedback/v1", "label": "normal",
                                     "source": {k: alert["source"][k] for k in
                                                ("topic", "partition", "offset")}}))
                for alert in alerts] + [(None, b"not a label")] + [
                # a label whose text is not the comment at its offset: refused
                (None, orjson.dumps({"schema": "detector.feedback/v1", "label": "normal",
                                     "text": "buy cheap pills now, not what was scored",
                                     "source": {k: alerts[0]["source"][k] for k in
                                                ("topic", "partition", "offset")}}))])

            def taught(d: RunningDetector) -> float:
                return metric_sum(d.metrics, "detector_feedback_labels_total",
                                  {"outcome": "taught"})

            await wait_for(lambda: taught(da) == 10 and taught(db) == 10,
                           what="each replica taught its own alerts' labels")
            await wait_for(lambda: sum(metric(d.metrics, "detector_feedback_labels_total",
                                              {"outcome": "refused",
                                               "reason": "text_mismatch"}) for d in (da, db))
                           == 1, what="the mismatched label refused by its alert's replica")
            for d in (da, db):
                # the other replica's ten alerts (and, on one, the mismatched label)
                assert metric(d.metrics, "detector_feedback_labels_total",
                              {"outcome": "skipped", "reason": "other_replica"}) in (10, 11)
                assert metric(d.metrics, "detector_feedback_false_alerts") == 10
            await wait_for(lambda: all(metric(d.metrics, "detector_centroid_version")
                                       >= v + 20 for d, v in zip((da, db), start, strict=True)),
                           what="both replicas hold both replicas' labels")
            for partition in (0, 1):
                await produce(kafka_bootstrap, topic, [
                    message(t, 5000 + 1000 * partition + i)
                    for i, t in enumerate(drug_comments(10, 60 + partition))],
                    partition=partition)
            await wait_for(lambda: metric(da.metrics, "detector_records_scored_total") == 20
                           and metric(db.metrics, "detector_records_scored_total") == 20,
                           what="later drug reviews scored")
            # the labelled comments re-sent, each to the other replica's partition: the
            # label memory shared through the state topic keeps them from alerting there
            for partition in (0, 1):
                await produce(kafka_bootstrap, topic, [
                    message(t, 9000 + 1000 * partition + i)
                    for i, t in enumerate(drug_comments(10, 50 + partition))],
                    partition=1 - partition)
            await wait_for(lambda: metric(da.metrics, "detector_records_scored_total") == 30
                           and metric(db.metrics, "detector_records_scored_total") == 30,
                           what="labelled comments re-sent and scored")
        scores = values(await read_topic(kafka_bootstrap, a.alerts.scores_topic or "",
                                         at_least=60))
        resent = [s for s in scores if int(s["id"][1:]) >= 9000]
        assert len(resent) == 20
        assert not [s["id"] for s in resent if s["anomaly"]], "a labelled normal alerted again"
        assert all(s["label"]["kind"] == "normal" for s in resent)
        dead = values(await read_topic(kafka_bootstrap, a.alerts.dead_letter_topic,
                                       at_least=2, deadline_s=20))
        assert sorted(d["reason"] for d in dead) == ["invalid_json", "text_mismatch"]
        for partition in (0, 1):
            before = [s["similarity"] for s in scores
                      if 1000 * partition <= int(s["id"][1:]) < 1000 * partition + 10]
            after = [s["similarity"] for s in scores
                     if 5000 + 1000 * partition <= int(s["id"][1:])
                     < 5000 + 1000 * partition + 10]
            assert len(before) == len(after) == 10
            assert np.mean(after) > np.mean(before) + 0.05, (partition, before, after)


class TestRecalibration:
    async def test_last_hours_without_alerted_and_labelled_comments_is_published(
        self, kafka_bootstrap: str, new_topic: NewTopic, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """What the chart's CronJob runs: the last hours of the input topic, without the
        comments the alerts topic names and those whose latest label is anomaly (a later
        normal label takes one back), calibrated and published on the state topic."""
        from aiokafka import AIOKafkaProducer

        from detector.cli import main
        from detector.state.store import StateStore

        topic, alerts_topic, feedback_topic = (await new_topic(), await new_topic(),
                                               await new_topic())
        state_topic, name = unique("state"), unique("det")
        old = int((time.time() - 3 * 3600) * 1000)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i, text in enumerate(shop_comments(20, 70)):  # older than the range
                await producer.send_and_wait(topic, orjson.dumps({"id": f"old{i}",
                                                                  "text": text}),
                                             timestamp_ms=old)
        finally:
            await producer.stop()
        shop, drugs = shop_comments(400, 71), drug_comments(30, 72)
        metas = await produce(kafka_bootstrap, topic, [message(t, i) for i, t in
                                                        enumerate(shop + drugs)])
        drug_sources = [{"topic": topic, "partition": p, "offset": o} for p, o in metas[400:]]
        await produce(kafka_bootstrap, alerts_topic, [
            (None, orjson.dumps({"source": s})) for s in drug_sources[:15]])
        labels = [{"source": s, "label": "anomaly"} for s in drug_sources[15:]]
        labels += [{"id": "c0", "label": "anomaly"}, {"id": "c1", "label": "anomaly"},
                   {"id": "c1", "label": "normal"}]
        await produce(kafka_bootstrap, feedback_topic, [
            (None, orjson.dumps({"schema": "detector.feedback/v1", **body}))
            for body in labels])
        monkeypatch.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
        monkeypatch.setenv("DETECTOR_NAME", name)
        monkeypatch.setenv("DETECTOR_ALERTS__TOPIC", alerts_topic)
        monkeypatch.setenv("DETECTOR_FEEDBACK__TOPIC", feedback_topic)
        monkeypatch.setenv("DETECTOR_STATE__TOPIC", state_topic)
        out = tmp_path / "recal.json"

        def run() -> int:
            return main(["--config", "config/detector.yaml", "calibrate", "--topic", topic,
                         "--last-hours", "1", "--exclude-alerted", "--exclude-labelled",
                         "--target-fpr", "0.05", "--bootstrap", "50", "--cache-dir",
                         str(tmp_path / "cache"), "--out", str(out), "--publish"])

        code = await asyncio.wait_for(asyncio.to_thread(run), 120)
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert f"left out 31 alerted or anomaly-labelled comments of {topic}" in captured.err
        artifact = load_artifact(out)
        assert artifact.counts.train + artifact.counts.holdout == 399
        settings = detector_settings(kafka_bootstrap, topic, name=name,
                                     state={"enabled": True, "topic": state_topic})
        store = StateStore(settings)
        await store.load()
        assert store.calibration is not None
        assert f"published {out} as calibration {version_of(artifact)}" in captured.out

    async def test_labels_are_neither_lost_nor_applied_twice_across_a_restart(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """A replica applies labels and stops; labels (with text) arrive while it is down.
        Restarted under the same id it resumes after the labels it had applied: it applies
        exactly the new ones (their comments no longer cached: read back from the input
        topic and checked), on top of the contribution it had published."""
        shop, _ = await shop_and_mixed(local_embedder, tmp_path)
        topic, feedback_topic = await new_topic(), await new_topic()
        settings = detector_settings(
            kafka_bootstrap, topic, name=unique("det"), scoring={"calibration_file": shop},
            feedback={"enabled": True, "topic": feedback_topic, "weight": 50},
            state={"enabled": True, "topic": unique("state"), "snapshot_interval_s": 0.5,
                   "replica_id": "r1"})
        drugs = drug_comments(16, 80)

        def labels(offsets: range) -> list[tuple[None, bytes]]:
            return [(None, orjson.dumps({
                "schema": "detector.feedback/v1", "label": "normal", "text": drugs[i],
                "source": {"topic": topic, "partition": 0, "offset": i}})) for i in offsets]

        def taught(d: RunningDetector) -> float:
            return metric_sum(d.metrics, "detector_feedback_labels_total", {"outcome": "taught"})

        async with running_detector(settings, local_embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_assigned_partitions") == 1,
                           deadline_s=120, what="partition assigned")
            start = metric(det.metrics, "detector_centroid_version")
            # every labelled comment is consumed first: a label applies only to a record
            # this detector consumed, and its text must match it
            await produce(kafka_bootstrap, topic, [message(t, i) for i, t in
                                                   enumerate(drugs[:12])])
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 12,
                           what="scored")
            await produce(kafka_bootstrap, feedback_topic, labels(range(8)))
            await wait_for(lambda: taught(det) == 8, what="first labels taught")
        await produce(kafka_bootstrap, feedback_topic, labels(range(8, 12)))
        sentinel = (None, orjson.dumps({"schema": "detector.feedback/v1", "label": "normal",
                                         "source": {"topic": topic, "partition": 0,
                                                    "offset": 999}}))
        async with running_detector(settings, local_embedder) as det:
            # read in order: once the sentinel (ours, not cached, no text) is counted
            # unresolved, every label before it has been read
            await produce(kafka_bootstrap, feedback_topic, [sentinel])
            await wait_for(lambda: metric(det.metrics, "detector_feedback_labels_total",
                                          {"outcome": "unresolved", "reason": "not_cached"})
                           == 1, what="sentinel read")
            assert taught(det) == 4, "exactly the labels sent while down were applied"
            assert metric(det.metrics, "detector_centroid_version") == start + 12
            # the label memory came back from the state topic: the comments labelled
            # before the restart, sent again, do not alert
            await produce(kafka_bootstrap, topic, [message(t, 500 + i) for i, t in
                                                   enumerate(drugs[:8])])
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 8,
                           what="labelled comments re-sent and scored")
        scores = values(await read_topic(kafka_bootstrap, settings.alerts.scores_topic or "",
                                         at_least=20))
        resent = [s for s in scores if int(s["id"][1:]) >= 500]
        assert len(resent) == 8
        assert not [s["id"] for s in resent if s["anomaly"]], "memory lost at restart"
