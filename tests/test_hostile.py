"""Hostile input: arbitrary bytes, huge values, deep nesting, invalid UTF-8, texts over
the token limit, zero-width and mixed scripts. Each is scored or dead-lettered with a
reason, and the daemon keeps running."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.config import InputSettings
from detector.embedders.local import LocalEmbedder
from detector.io import records as rec
from detector.model.alerts import encode_alert
from detector.model.baselines import Judgement
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

REASONS = {"missing_value", "too_large", "invalid_utf8", "invalid_json", "missing_text",
           "empty_text", "too_long"}


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = None
    topic: str = "t"
    partition: int = 0
    offset: int = 0
    timestamp: int = 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=20)


class TestDecodeProperties:
    @given(st.binary(max_size=2000), st.one_of(st.none(), st.binary(max_size=64)))
    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    def test_arbitrary_bytes_never_raise(self, value: bytes, key: bytes | None) -> None:
        """any bytes become a comment or a dead letter with a known reason."""
        out = rec.decode(Record(value, key), InputSettings(max_bytes=1500))
        if isinstance(out, rec.DeadLetter):
            assert out.reason in REASONS
            assert out.error
        else:
            assert out.text.strip()

    @given(json_values)
    @settings(max_examples=300)
    def test_arbitrary_json_never_raises(self, body: object) -> None:
        """any JSON document is decoded or dead-lettered; outputs encode to JSON."""
        out = rec.decode(Record(orjson.dumps(body)), InputSettings())
        ctx = rec.Context("d", "0", "m", 4)
        if isinstance(out, rec.DeadLetter):
            assert out.reason in REASONS
            orjson.loads(rec.encode_dead_letter(out, ctx))
        else:
            judged = Judgement(None, "global", 0.1, 0.1, 0.2, "global", 0, 1.0, anomaly=True,
                             accepted=False)
            orjson.loads(encode_alert(out, judged, method="centroid", ctx=ctx))

    @given(st.text(min_size=1, max_size=300))
    @settings(max_examples=300)
    def test_any_unicode_text_is_scored_or_empty(self, text: str) -> None:
        """mixed scripts, zero-width and control characters: scored unless invisible."""
        out = rec.decode(Record(orjson.dumps({"text": text})), InputSettings())
        if isinstance(out, rec.DeadLetter):
            assert out.reason == "empty_text"
        else:
            assert out.text == text

    def test_deep_nesting_is_refused_without_recursion(self) -> None:
        """100,000 levels of nesting are refused cheaply, not parsed."""
        out = rec.decode(Record(b"[" * 100_000 + b"]" * 100_000), InputSettings())
        assert isinstance(out, rec.DeadLetter)
        assert out.reason == "invalid_json"


@pytest.mark.kafka
class TestHostileStream:
    async def test_the_daemon_survives_hostile_records(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """each hostile record is scored or dead-lettered; consumption goes on."""
        topic = await new_topic()
        hostile: list[tuple[bytes | None, bytes | None]] = [
            (b"\xff\xfe", b"\x00\x01\x02"),
            (None, b'{"text": "' + b"x" * 1_000_000 + b'"}'),  # 1 MB
            (b"k", b"[" * 5000 + b"]" * 5000),
            (b"k", b'{"text": "\xed\xa0\x80 lone surrogate"}'),
            (b"k", orjson.dumps({"text": "word " * 20_000})),
            (b"k", orjson.dumps({"text": "\u200b\u200c\u200d\ufeff"})),
            (b"k", orjson.dumps({"text": "Mixed 混合 сценарий العربية 🙂 text"})),
            (b"k", orjson.dumps({"text": "a\u0000b\u0007c"})),
            (b"k", orjson.dumps({"text": {"nested": "object"}})),
            (b"k", orjson.dumps(["not", "an", "object"])),
        ]
        settings_ = detector_settings(kafka_bootstrap, topic, input={"max_bytes": 999_000})
        async with running_detector(settings_, RecordingEmbedder(local_embedder)) as det:
            await produce(kafka_bootstrap, topic, hostile)
            await produce(kafka_bootstrap, topic,
                          [(b"after", orjson.dumps({"text": "The lamp works well."}))])
            await wait_for(lambda: metric(det.metrics, "detector_records_consumed_total")
                           == len(hostile) + 1, what="every record consumed")
            await wait_for(lambda: metric(det.metrics, "detector_records_scored_total") == 3,
                           what="the scorable ones scored")
            assert not det.task.done()
        letters = values(await read_topic(kafka_bootstrap, settings_.alerts.dead_letter_topic,
                                          at_least=8, deadline_s=20))
        assert sorted(v["reason"] for v in letters) == sorted(
            ["invalid_json", "too_large", "invalid_json", "invalid_utf8", "too_long",
             "empty_text", "missing_text", "invalid_json"])
        [big] = [v for v in letters if v["reason"] == "too_large"]
        assert big["value_truncated"] is True
        assert big["value_bytes"] > 1_000_000
        group = await committed(kafka_bootstrap, settings_.kafka.group_id, topic)
        assert group == {0: len(hostile) + 1}

    async def test_a_fetch_of_expensive_records_does_not_stall_the_event_loop(
        self, kafka_bootstrap: str, new_topic: NewTopic, local_embedder: LocalEmbedder
    ) -> None:
        """records that take the exact JSON path (a top-level and a nested "id"; 9,000
        fields each) are decoded in slices: the event loop's longest stall while the daemon
        ingests a fetch of 32 of them (loop-time probes every 2 ms) stays near the cost of
        one record, not of the whole fetch."""
        topic = await new_topic(partitions=4)
        body = ", ".join(f'"k{i}": "v{i}"' for i in range(9_000))
        value = f'{{"id": 7, "meta": {{"id": 1}}, {body}}}'.encode()  # no text: dead letter
        one = float("inf")  # CPU seconds of one decode
        for _ in range(3):
            start = time.thread_time()
            out = rec.decode(Record(value), InputSettings())
            one = min(one, time.thread_time() - start)
        assert isinstance(out, rec.DeadLetter)
        assert out.reason == "missing_text"
        count = 32
        await produce(kafka_bootstrap, topic, [(b"k%d" % i, value) for i in range(count)])
        settings_ = detector_settings(kafka_bootstrap, topic)
        lags: list[float] = []
        done = asyncio.Event()
        async with running_detector(settings_, RecordingEmbedder(local_embedder)) as det:
            def consumed() -> float:
                return metric(det.metrics, "detector_records_consumed_total")

            async def probe() -> None:
                # Each stretch between two probes is the time the loop was held; on a
                # shared machine the thread may also wait for a core, so the bound is on
                # the CPU time the loop's thread spent in the stretch (its wall lag too).
                loop = asyncio.get_running_loop()
                while not done.is_set():
                    before, cpu = loop.time(), time.thread_time()
                    await asyncio.sleep(0.002)
                    if consumed() > 0:  # from the first ingest on: start-up is not measured
                        lags.append(min(loop.time() - before - 0.002,
                                        time.thread_time() - cpu))

            probing = asyncio.create_task(probe())
            await wait_for(lambda: consumed() == count, what="every record consumed")
            done.set()
            await probing
            await wait_for(lambda: metric(det.metrics, "detector_dead_letters_total",
                                          {"reason": "missing_text"}) == count,
                           what="every record dead-lettered")
        assert lags
        assert max(lags) < 4 * one + 0.05, (max(lags), one)
