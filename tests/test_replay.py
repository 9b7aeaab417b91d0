"""`detector replay` against a real broker: ranges, determinism, no group side effects,
resume after an interrupt, and the refusal to write to the live alerts topic."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
import structlog.testing
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from detector.commands.replay import ReplayOptions, replay
from detector.embedders.base import Matrix
from detector.embedders.local import LocalEmbedder
from detector.errors import ConfigError
from devtools.sample_data import stream
from tests.helpers import NewTopic, RecordingEmbedder, committed, detector_settings

pytestmark = pytest.mark.kafka
BASE_TS = (int(time.time()) - 86_400) * 1000  # brokers refuse far-future stamps


async def produce_timed(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    """n comments spread over partitions, record i stamped BASE_TS + i seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        comments = stream(n, anomaly_rate=0.1, seed=5)
        for i, c in enumerate(comments):
            await producer.send(topic, value=orjson.dumps({"id": f"r{i}", "text": c.text}),
                                key=f"k{i}".encode(), partition=i % partitions,
                                timestamp_ms=BASE_TS + i * 1000)
        await producer.flush()
    finally:
        await producer.stop()


def source_of(line: dict[str, Any]) -> tuple[int, int]:
    source = line["source"]
    return source["partition"], source["offset"]


def lines_without_detected_at(data: bytes) -> list[dict[str, object]]:
    out = []
    for line in data.splitlines():
        body = orjson.loads(line)
        body.pop("detected_at", None)
        out.append(body)
    return out


class StopAfter:
    """An embedder wrapper that sets `stop` after a number of calls (a Ctrl-C stand-in)."""

    def __init__(self, inner: LocalEmbedder, calls: int, stop: asyncio.Event) -> None:
        self.inner = inner
        self.calls = calls
        self.stop = stop
        self.name = inner.name
        self.dimension = inner.dimension

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls -= 1
        if self.calls == 0:
            self.stop.set()
        return await self.inner.embed(texts)

    async def aclose(self) -> None:
        """Owned by the session."""


class TestReplay:
    async def test_time_range_returns_exactly_the_records_in_it(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """--from/--to select records by timestamp in every partition, end exclusive."""
        topic = await new_topic(partitions=3)
        await produce_timed(kafka_bootstrap, topic, 90, 3)
        settings = detector_settings(kafka_bootstrap, topic)
        scores = tmp_path / "scores.jsonl"
        opts = ReplayOptions(topic=topic, time_from=BASE_TS + 20_000, time_to=BASE_TS + 50_000,
                             dry_run=True, scores_file=scores, progress_file=None,
                             show_progress=False)
        summary = await replay(settings, opts, embedder=RecordingEmbedder(local_embedder))
        got = sorted(orjson.loads(line)["id"] for line in scores.read_bytes().splitlines())
        assert got == sorted(f"r{i}" for i in range(20, 50))
        assert summary.records == 30
        assert summary.scored == 30

    async def test_replays_are_deterministic_and_leave_the_group_alone(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """two evolving replays give identical alerts; the live group's offsets stay put."""
        topic = await new_topic(partitions=2)
        await produce_timed(kafka_bootstrap, topic, 200, 2)
        settings = detector_settings(kafka_bootstrap, topic)
        group = settings.kafka.group_id
        live = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
        await live.start()
        live.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await live.commit({TopicPartition(topic, 0): 7, TopicPartition(topic, 1): 11})
        await live.stop()
        outputs = []
        for run in range(2):
            out = tmp_path / f"alerts-{run}.jsonl"
            opts = ReplayOptions(topic=topic, output=out, state="evolving",
                                 progress_file=tmp_path / f"p{run}.json", show_progress=False)
            summary = await replay(settings, opts, embedder=RecordingEmbedder(local_embedder))
            assert summary.records == 200
            outputs.append(out.read_bytes())
        assert summary.flagged > 0
        assert lines_without_detected_at(outputs[0]) == lines_without_detected_at(outputs[1])
        assert await committed(kafka_bootstrap, group, topic, partitions=2) == {0: 7, 1: 11}

    @pytest.mark.parametrize(("partitions", "state"), [(2, "frozen"), (1, "evolving")])
    async def test_resume_after_interrupt_gives_the_uninterrupted_output(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path, *, partitions: int, state: Literal["frozen", "evolving"],
    ) -> None:
        """an interrupted replay resumed with --resume writes what one full run writes:
        across partitions when the centroid is frozen (then the outputs do not depend on
        how the partitions' batches interleave, which fetch timing decides), and with the
        evolving centroid restored from the progress file on one partition (where the
        order of updates is the offsets')."""
        topic = await new_topic(partitions=partitions)
        await produce_timed(kafka_bootstrap, topic, 300, partitions)
        # fetches of 20 records and a reorder window of 4 batches, so the interrupt comes
        # before the end offsets are fetched and the drain leaves most of 300
        settings = detector_settings(
            kafka_bootstrap, topic, embedding={"reorder_window": 4},
            kafka={"bootstrap_servers": kafka_bootstrap, "max_poll_records": 20})
        full = tmp_path / "full.jsonl"
        await replay(settings, ReplayOptions(topic=topic, output=full, state=state,
                                             progress_file=tmp_path / "full.json",
                                             show_progress=False),
                     embedder=RecordingEmbedder(local_embedder))

        parts = tmp_path / "parts.jsonl"
        progress = tmp_path / "progress.json"
        stop = asyncio.Event()
        first = await replay(settings, ReplayOptions(
            topic=topic, output=parts, state=state, progress_file=progress,
            show_progress=False), stop=stop,
            # 30 calls embed the seed file; interrupt after 6 more batches of the topic
            embedder=StopAfter(local_embedder, 36, stop))
        assert first.interrupted
        assert 0 < first.records < 300
        second = await replay(settings, ReplayOptions(
            topic=topic, output=parts, state=state, progress_file=progress, resume=True,
            show_progress=False), embedder=RecordingEmbedder(local_embedder))
        assert not second.interrupted
        assert first.records + second.records == 300
        got, want = (lines_without_detected_at(f.read_bytes()) for f in (parts, full))
        if partitions > 1:
            got, want = (sorted(lines, key=source_of) for lines in (got, want))
        assert got == want

    async def test_refuses_the_live_alerts_topic_without_force(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
    ) -> None:
        """--alerts-topic equal to the live alerts topic is refused unless --force."""
        topic = await new_topic()
        settings = detector_settings(kafka_bootstrap, topic)
        opts = ReplayOptions(topic=topic, alerts_topic=settings.alerts.topic,
                             progress_file=None, show_progress=False)
        with pytest.raises(ConfigError, match="--force"):
            await replay(settings, opts, embedder=RecordingEmbedder(local_embedder),
                         out=io.BytesIO())


class TestDryRunLogs:
    async def test_dry_run_keeps_per_alert_lines_at_debug(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
        tmp_path: Path,
    ) -> None:
        """--dry-run prints only the summary: each alert is logged at debug, not info."""
        topic = await new_topic(partitions=1)
        await produce_timed(kafka_bootstrap, topic, 60, 1)
        settings = detector_settings(kafka_bootstrap, topic)
        opts = ReplayOptions(topic=topic, dry_run=True, progress_file=None,
                             show_progress=False)
        with structlog.testing.capture_logs() as logs:
            summary = await replay(settings, opts, embedder=RecordingEmbedder(local_embedder))
        alerts = [e for e in logs if e["event"] == "alert"]
        assert summary.flagged > 0
        assert len(alerts) == summary.flagged
        assert {e["log_level"] for e in alerts} == {"debug"}


class TestReplayEnd:
    async def test_reaching_the_end_finishes_every_batch_however_long_it_takes(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
    ) -> None:
        """reading the last record of the range is not a shutdown: with 20 slow batches
        still to embed and a shutdown budget of 0.2 s, every record is scored and the replay
        ends uninterrupted (exit 0)."""
        topic = await new_topic(partitions=1)
        await produce_timed(kafka_bootstrap, topic, 200, 1)
        settings = detector_settings(kafka_bootstrap, topic, shutdown_timeout_s=0.2,
                                     embedding={"concurrency": 1})
        opts = ReplayOptions(topic=topic, dry_run=True, progress_file=None,
                             show_progress=False)
        slow = RecordingEmbedder(local_embedder, delay_s=0.1)  # >= 2 s for the 20 batches
        summary = await replay(settings, opts, embedder=slow)
        assert not summary.interrupted
        assert summary.records == 200
        assert summary.scored == 200

    async def test_a_stop_after_the_end_still_starts_the_shutdown_budget(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder,
    ) -> None:
        """a signal while a replay finishes its last batches drains within
        shutdown_timeout_s: the replay ends interrupted with batches left unscored."""
        topic = await new_topic(partitions=1)
        await produce_timed(kafka_bootstrap, topic, 200, 1)
        settings = detector_settings(kafka_bootstrap, topic, shutdown_timeout_s=0.2,
                                     embedding={"concurrency": 1})
        opts = ReplayOptions(topic=topic, dry_run=True, progress_file=None,
                             show_progress=False)
        stop = asyncio.Event()
        # 30 calls embed the seed file; stop during the 5th of the topic's 20 batches
        slow = RecordingEmbedder(StopAfter(local_embedder, 35, stop), delay_s=0.1)
        summary = await replay(settings, opts, embedder=slow, stop=stop)
        assert summary.interrupted
        assert summary.scored < 200
