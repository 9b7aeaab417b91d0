"""Published calibration artifacts larger than one Kafka record (detector.state.chunks):
split into parts and a head, reassembled by the state topic's reader, incomplete sets
ignored; and a default-size artifact at 1,024 dimensions published on the real broker
with default limits (issue 23, item 1)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from detector.calibration import artifact as cal
from detector.commands.calibrate import CalibrateOptions, calibrate_vectors, publish
from detector.config import Settings
from detector.model.reservoir import Ref
from detector.state import chunks
from detector.state.published import encode, parse, record_key, version_of
from detector.state.store import StateStore
from tests.helpers import detector_settings, produce, unique

DIM = 1024


def big_artifact(seed: int) -> cal.CalibrationArtifact:
    """What `detector calibrate` makes at default settings (reservoir of 2,000) at 1,024
    dimensions: about 3 MB as a published record."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=DIM)
    rows = direction + rng.normal(size=(3000, DIM)) * 2.0
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    args = CalibrateOptions(holdout=0.3, seed=seed, select="target_fpr", target_fpr=0.05,
                            target_precision=0.9, bootstrap=10)
    embedder = SimpleNamespace(name="fake-model", dimension=DIM)
    refs = [Ref("comments", 0, i, f"c{i}") for i in range(len(rows))]
    result = calibrate_vectors(Settings(), args, rows, None, keys=[None] * len(rows),
                               refs=refs, embedder=embedder)
    return result.artifact


def test_a_small_record_is_written_unchanged_and_a_large_one_in_parts() -> None:
    assert chunks.split("d", "v1", b"x" * 100, part_bytes=100) == [
        (record_key("d"), b"x" * 100)]
    record = bytes(range(256)) * 5
    pairs = chunks.split("d", "v1", record, part_bytes=500)
    assert [k for k, _ in pairs] == [b"d/calibration/v1/0", b"d/calibration/v1/1",
                                     b"d/calibration/v1/2", b"d/calibration"]
    assert all(chunks.is_part(v) for _, v in pairs[:-1])
    assert chunks.is_head(pairs[-1][1])
    assert chunks.part_keys_of("d", b"x" * 500, part_bytes=500) == []
    reader = chunks.Reassembler()
    reader.part(orjson.dumps({"schema": chunks.PART_SCHEMA, "version": "old", "part": 0,
                              "data": "AAAA"}))
    for _, value in pairs[:-1]:
        reader.part(value)
    assert reader.head(pairs[-1][1]) == record
    assert reader.parts == {}  # the old version's part is forgotten with the head


def test_a_head_with_a_missing_or_wrong_part_is_incomplete() -> None:
    record = b"y" * 1200
    pairs = chunks.split("d", "v2", record, part_bytes=500)
    reader = chunks.Reassembler()
    reader.part(pairs[0][1])
    reader.part(pairs[2][1])
    with pytest.raises(chunks.IncompleteError, match="1 of its 3 parts are missing"):
        reader.head(pairs[3][1])
    other = chunks.split("d", "v2", b"z" * 1200, part_bytes=500)
    for _, value in [pairs[0], other[1], pairs[2]]:  # a part of another record
        reader.part(value)
    with pytest.raises(chunks.IncompleteError, match="digest"):
        reader.head(pairs[3][1])
    for _, value in pairs[:-1]:  # the parts come again before the head: whole again
        reader.part(value)
    assert reader.head(pairs[3][1]) == record


async def state_records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    """Every record of the (one-partition) state topic, in order, up to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[bytes, bytes | None]] = []
        while await consumer.position(tp) < end:
            fetched = await consumer.getmany(tp, timeout_ms=1000)
            out += [(r.key or b"", r.value) for r in fetched.get(tp, [])]
        return out
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_a_default_size_artifact_at_1024_dimensions_is_published_and_read(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    """Published with the default producer and topic limits, read back whole by the state
    reader; a second publish replaces it and deletes the first one's parts; a head whose
    parts are not all on the topic is ignored."""
    first, second = big_artifact(1), big_artifact(2)
    assert len(first.exemplars) == 2000
    assert len(encode("d", first)) > 2_500_000  # over twice aiokafka's 1 MiB limit
    name, topic = unique("det"), unique("state")
    settings = detector_settings(kafka_bootstrap, unique("in"), name=name,
                                 state={"enabled": True, "topic": topic})
    cal.save_artifact(first, tmp_path / "first.json")
    cal.save_artifact(second, tmp_path / "second.json")

    assert await publish(settings, tmp_path / "first.json") == version_of(first)
    store = StateStore(settings)
    await store.load()
    assert store.calibration is not None
    assert parse(store.calibration).artifact == first

    assert await publish(settings, tmp_path / "second.json") == version_of(second)
    store = StateStore(settings)
    await store.load()
    assert store.calibration is not None
    assert parse(store.calibration).artifact == second
    written = await state_records(kafka_bootstrap, topic)
    old_parts = {k for k, _ in written if k.startswith(f"{name}/calibration/"
                                                      f"{version_of(first)}/".encode())}
    assert len(old_parts) >= 5  # ~3 MB in parts of 512 KiB
    newest = {}
    for key, value in written:
        newest[key] = value
    assert all(newest[k] is None for k in old_parts)  # tombstoned: compaction drops them

    # a third artifact whose last part never reached the topic: its head is ignored
    third = chunks.split(name, "broken", b"w" * (2 * chunks.PART_BYTES + 1))
    await produce(kafka_bootstrap, topic, [third[0], third[1], third[3]])
    store = StateStore(settings)
    await store.load()
    assert store.calibration is not None
    assert parse(store.calibration).artifact == second
