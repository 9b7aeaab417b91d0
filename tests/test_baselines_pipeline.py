"""Per-key baselines and explained alerts on a real broker: a minority key judged by its
own baseline, per-key state across a restart and across two replicas, and alerts whose
nearest exemplars are real, earlier, accepted records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detector.calibration import keys as keycal
from detector.calibration.artifact import calibrate, load_artifact, save_artifact
from detector.config import Settings
from detector.embedders.local import LocalEmbedder
from detector.model.centroid import Centroid
from detector.model.reservoir import Ref, encode_exemplars
from detector.state.sharing import KeyRecord
from detector.state.store import StateStore
from devtools.sample_data import SPAM
from tests.helpers import (
    NewTopic,
    detector_settings,
    drug_comments,
    metric,
    produce,
    read_topic,
    running_detector,
    shop_comments,
    unique,
    values,
    wait_for,
)

pytestmark = pytest.mark.kafka

def message(text: str, channel: str, i: int) -> tuple[bytes, bytes]:
    return channel.encode(), orjson.dumps({"id": f"{channel}-{i}", "text": text,
                                           "meta": {"channel": channel}})


async def keyed_artifact(embedder: LocalEmbedder, path: Path, *, exemplars: bool = True
                         ) -> Path:
    """An artifact calibrated on 1,000 shop and 6 pharmacy comments, the way `detector
    calibrate` does it with scoring.key_field: the global baseline from all of them, a
    baseline per channel; the pharmacy channel's threshold is the pooled key threshold."""
    shop, drugs = shop_comments(1000, 1), drug_comments(6, 2)
    vectors = (await embedder.embed(shop + drugs)).astype(np.float64)
    keys = ["shop"] * 1000 + ["pharmacy"] * 6
    train = [*range(0, 700), 1000, 1001, 1002, 1003]
    hold = [*range(700, 1000), 1004, 1005]
    refs = [Ref("calibration", -1, i) for i in range(len(keys))]
    train_refs = [refs[i] for i in train]
    fitted = keycal.fit(vectors[train], train_refs, 2000)
    result = calibrate(vectors[train], vectors[hold], None, model=embedder.name,
                       dimension=embedder.dimension, target_fpr=0.01, bootstrap=20)
    # 300 held-out shop comments support a 1 % key threshold at the point estimate
    # (confidence 0.5), not at the default conservative 0.9 (667 needed)
    per_key = keycal.calibrate_keys(vectors[train], [keys[i] for i in train], train_refs,
                                    vectors[hold], [keys[i] for i in hold], target_fpr=0.01,
                                    reservoir_size=100, min_train=4, confidence=0.5)
    encoded = (encode_exemplars(fitted.reservoir.exemplars(), keep_text=False) if exemplars
               else [])
    save_artifact(result.artifact.with_baselines(
        encoded, per_key.to_json("meta.channel", 4, keep_text=False)), path)
    return path


def keyed_settings(bootstrap: str, topic: str, artifact: Path, **overrides: Any) -> Settings:
    scoring = {"calibration_file": artifact, "key_field": "meta.channel",
               "key_min_samples": 4, "key_threshold_confidence": 0.5} | overrides.pop(
                   "scoring", {})
    return detector_settings(bootstrap, topic, scoring=scoring, **overrides)


class TestMinorityKey:
    async def test_minority_key_is_judged_by_its_own_baseline(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Two channels with different populations get different baselines: the pharmacy
        channel's ordinary comments, which the global baseline alerts, are judged by the
        pharmacy baseline and pass, while spam under either channel is alerted with the
        baseline that judged it."""
        artifact = await keyed_artifact(local_embedder, tmp_path / "cal.json")
        body = orjson.loads(artifact.read_bytes())
        glob = load_artifact(artifact)
        drugs = drug_comments(40, 7)
        sims = (await local_embedder.embed(drugs)).astype(np.float64) @ np.asarray(
            Centroid.from_dict(glob.centroid).vector)
        assert (sims < glob.threshold).mean() >= 0.9, "the global baseline alerts them"
        assert body["keys"]["baselines"]["pharmacy"]["threshold"] is None  # pooled

        topic = await new_topic()
        spam = SPAM[:4]
        items = ([message(t, "shop", i) for i, t in enumerate(shop_comments(60, 9))]
                 + [message(t, "pharmacy", i) for i, t in enumerate(drugs)]
                 + [message(t, "pharmacy", 100 + i) for i, t in enumerate(spam)]
                 + [message(t, "shop", 100 + i) for i, t in enumerate(spam)])
        await produce(kafka_bootstrap, topic, items)
        settings = keyed_settings(kafka_bootstrap, topic, artifact)
        async with running_detector(settings, local_embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total")
                           == len(items), what="all scored")
            assert metric(det.metrics, "detector_baseline_keys") == 2
        scores = {v["id"]: v for v in values(await read_topic(
            kafka_bootstrap, settings.alerts.scores_topic or "", at_least=len(items)))}
        drug_alerts = [i for i in range(40) if scores[f"pharmacy-{i}"]["anomaly"]]
        assert len(drug_alerts) <= 4, f"ordinary pharmacy comments alerted: {drug_alerts}"
        alerts = {v["id"]: v for v in values(await read_topic(
            kafka_bootstrap, settings.alerts.topic, at_least=8))}
        for channel in ("pharmacy", "shop"):
            for i in range(4):
                alert = alerts[f"{channel}-{100 + i}"]
                assert alert["schema"] == "detector.alert/v2"
                assert alert["baseline"]["scope"] == "key"
                assert alert["baseline"]["key"] == channel
        # the shop channel had enough held-out normals for its own threshold, pharmacy not
        assert alerts["shop-100"]["baseline"]["threshold_source"] == "key"
        assert alerts["pharmacy-100"]["baseline"]["threshold_source"] == "pooled"


class TestPerKeyState:
    async def test_key_baseline_survives_a_restart(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """The pharmacy baseline's learning is published to the state topic and the next
        start continues from it (its centroid version goes on from where it stopped)."""
        artifact = await keyed_artifact(local_embedder, tmp_path / "cal.json")
        topic = await new_topic()
        settings = keyed_settings(
            kafka_bootstrap, topic, artifact, name=unique("det"),
            state={"enabled": True, "topic": unique("state"), "snapshot_interval_s": 3600,
                   "replica_id": "r1"})
        first = [message(t, "pharmacy", i) for i, t in enumerate(drug_comments(30, 11))]
        await produce(kafka_bootstrap, topic, first)
        async with running_detector(settings, local_embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 30,
                           what="first run scored")
        store = StateStore(settings)
        await store.load()
        (record,) = [r for r in store.shared.values()
                     if isinstance(r, KeyRecord) and r.key == "pharmacy"]
        learnt = record.contribution.updates
        assert learnt > 0, "ordinary pharmacy comments were learnt"

        await produce(kafka_bootstrap, topic, [message("I have been taking metformin for "
                                                       "type 2 diabetes and my readings are "
                                                       "back to normal.", "pharmacy", 99)])
        async with running_detector(settings, local_embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 1,
                           what="second run scored")
        scores = values(await read_topic(kafka_bootstrap, settings.alerts.scores_topic or "",
                                         at_least=31))
        last = next(v for v in scores if v["id"] == "pharmacy-99")
        assert last["centroid_version"] >= learnt, "the key baseline resumed, not restarted"

    async def test_two_replicas_merge_their_key_baselines(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Two replicas, one partition each, learn the pharmacy key from their own records;
        through the state topic each ends up with the sum of both replicas' updates."""
        artifact = await keyed_artifact(local_embedder, tmp_path / "cal.json")
        topic = await new_topic(partitions=2)
        name, state_topic, group = unique("det"), unique("state"), unique("g")

        def replica(rid: str) -> Settings:
            return keyed_settings(
                kafka_bootstrap, topic, artifact, name=name,
                kafka={"bootstrap_servers": kafka_bootstrap, "group_id": group,
                       "commit_interval_ms": 200},
                state={"enabled": True, "topic": state_topic, "snapshot_interval_s": 0.5,
                       "replica_id": rid})

        a, b = replica("a"), replica("b")
        async with running_detector(a, local_embedder) as da, \
                running_detector(b, local_embedder) as db:
            await wait_for(lambda: metric(da.metrics, "detector_assigned_partitions") == 1
                           and metric(db.metrics, "detector_assigned_partitions") == 1,
                           deadline_s=120, what="one partition each")
            for partition in (0, 1):
                await produce(kafka_bootstrap, topic, [
                    message(t, "pharmacy", 1000 * partition + i)
                    for i, t in enumerate(drug_comments(20, 20 + partition))],
                    partition=partition)
            await wait_for(lambda: metric(da.metrics, "detector_records_scored_total") == 20
                           and metric(db.metrics, "detector_records_scored_total") == 20,
                           what="both partitions scored")
            store = StateStore(a)

            async def both_published() -> bool:
                await store.load()
                return {r.scope.replica for r in store.shared.values()
                        if isinstance(r, KeyRecord)} == {"a", "b"}

            await wait_for(both_published, what="both replicas published their key state")
            updates = {r.scope.replica: r.contribution.updates for r in store.shared.values()
                       if isinstance(r, KeyRecord)}
            assert min(updates.values()) > 0
            for partition in (0, 1):
                await produce(kafka_bootstrap, topic, [message(
                    "I have been taking ibuprofen for my back pain and the symptoms eased "
                    "within a week.", "pharmacy", 5000 + partition)], partition=partition)
            await wait_for(lambda: metric(da.metrics, "detector_records_scored_total") == 21
                           and metric(db.metrics, "detector_records_scored_total") == 21,
                           what="probe comments scored")
        scores = {v["id"]: v for v in values(await read_topic(
            kafka_bootstrap, a.alerts.scores_topic or "", at_least=1))}
        scores |= {v["id"]: v for v in values(await read_topic(
            kafka_bootstrap, b.alerts.scores_topic or "", at_least=1))}
        for partition in (0, 1):
            probe = scores[f"pharmacy-{5000 + partition}"]
            assert probe["centroid_version"] >= sum(updates.values()), \
                "each replica's pharmacy baseline holds both replicas' updates"


class TestExplanations:
    async def test_nearest_exemplars_are_real_earlier_accepted_records(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """Starting from an artifact without exemplars, every alert's nearest exemplars
        point at records of the input topic that came before it, were accepted into the
        baseline (their score says centroid_updated) and carry their text when asked."""
        artifact = await keyed_artifact(local_embedder, tmp_path / "cal.json",
                                        exemplars=False)
        topic = await new_topic()
        normal = [message(t, "shop", i) for i, t in enumerate(shop_comments(80, 31))]
        odd = [message(t, "shop", 500 + i) for i, t in enumerate(SPAM)]
        await produce(kafka_bootstrap, topic, normal + odd)
        settings = detector_settings(
            kafka_bootstrap, topic, scoring={"calibration_file": artifact,
                                             "keep_exemplar_text": True})
        async with running_detector(settings, local_embedder) as det:
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total")
                           == len(normal) + len(odd), what="all scored")
        by_offset = {v["source"]["offset"]: v for v in values(await read_topic(
            kafka_bootstrap, settings.alerts.scores_topic or "", at_least=len(normal)))}
        texts = {i: orjson.loads(value)["text"] for i, (_, value) in enumerate(normal + odd)}
        alerts = [v for v in values(await read_topic(kafka_bootstrap, settings.alerts.topic,
                                                     at_least=len(odd)))
                  if v["id"].startswith("shop-5")]
        assert len(alerts) == len(odd)
        for alert in alerts:
            assert alert["baseline"]["scope"] == "global"
            assert len(alert["nearest"]) == 3
            sims = [n["similarity"] for n in alert["nearest"]]
            assert sims == sorted(sims, reverse=True)
            for near in alert["nearest"]:
                src = near["source"]
                assert src["topic"] == topic
                assert src["offset"] < alert["source"]["offset"]
                assert by_offset[src["offset"]]["centroid_updated"] is True
                assert near["text"] == texts[src["offset"]]
                assert src["id"] == by_offset[src["offset"]]["id"]
