"""`make demo` says why an alert fired (devtools/demo.py): the nearest normal exemplar,
resolved to its text from the demo's own produced comments, the seed file or the input
topic, and the baseline with its threshold. Alerts are encoded by the daemon's own
`encode_alert`, so a renamed field fails here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka.structs import RecordMetadata, TopicPartition

from detector.config import Settings
from detector.io import records as rec
from detector.model.alerts import encode_alert
from detector.model.baselines import Judgement
from detector.model.reservoir import Neighbour, Ref
from devtools.demo import Resolver, explain, remember
from tests.helpers import NewTopic, produce

SEED = Path("config/normal_comments.jsonl")


def alert(*nearest: Ref, key: str | None = None) -> dict[str, object]:
    verdict = Judgement(key, "key" if key else "global", 0.12, 0.12, 0.31,
                      "key" if key else "global", 4, 80.0, anomaly=True, accepted=False,
                      nearest=tuple(Neighbour(0.55 - i / 10, r) for i, r in enumerate(nearest)))
    comment = rec.Comment(rec.Source("comments", 0, 99, 0, None), "zzkq vbbx", "c99")
    body: dict[str, object] = orjson.loads(encode_alert(
        comment, verdict, method="centroid", ctx=rec.Context("d", "0", "m", 8)))
    return body


def seed_text(line: int) -> str:
    text: str = orjson.loads(SEED.read_text().splitlines()[line])["text"]
    return text


async def test_an_alert_shows_its_nearest_seed_exemplar_and_baseline() -> None:
    """A seed-file exemplar (`seed:FILE`, partition -1, the row index) resolves to its
    line of the seed file without any broker; the baseline line has scope, threshold and
    its source."""
    resolver = Resolver("127.0.0.1:1", Settings())  # never contacted for seed rows
    lines = await explain(alert(Ref(f"seed:{SEED.name}", -1, 2, None)), resolver)
    assert len(lines) == 2
    assert "similarity=+0.550" in lines[0]
    assert repr(seed_text(2)[:70]) in lines[0]
    assert f"[seed:{SEED.name}/-1@2]" in lines[0]
    assert "global, threshold +0.310 (global)" in lines[1]
    keyed = await explain(alert(Ref(f"seed:{SEED.name}", -1, 0, None), key="shop"),
                          resolver)
    assert "key 'shop', threshold +0.310 (key)" in keyed[1]
    none = await explain(alert(), resolver)
    assert "none" in none[0]


async def test_an_alert_shows_a_produced_exemplar_by_its_acknowledged_offset() -> None:
    """The texts the demo produced are remembered at the partition and offset the broker
    acknowledged (the send future's metadata); a failed send is not remembered."""
    resolver = Resolver("127.0.0.1:1", Settings())
    loop = asyncio.get_running_loop()
    sent: asyncio.Future[RecordMetadata] = loop.create_future()
    sent.set_result(RecordMetadata("comments", 2, TopicPartition("comments", 2), 17, 0, 0, 0))
    remember(resolver, "Great kettle, boils fast.", sent)
    failed: asyncio.Future[RecordMetadata] = loop.create_future()
    failed.set_exception(RuntimeError("broker away"))
    remember(resolver, "never stored", failed)
    lines = await explain(alert(Ref("comments", 2, 17, "c17")), resolver)
    assert "'Great kettle, boils fast.'" in lines[0]
    assert "[comments/2@17]" in lines[0]
    assert "never stored" not in resolver.texts.values()


@pytest.mark.kafka
async def test_an_exemplar_not_produced_by_the_demo_is_read_from_the_topic(
    kafka_bootstrap: str, new_topic: NewTopic,
) -> None:
    """A reference the demo did not produce (another producer, an earlier run) is read
    back from its topic, partition and offset."""
    topic = await new_topic()
    metas = await produce(kafka_bootstrap, topic, [
        (None, orjson.dumps({"id": f"x{i}", "text": f"ordinary comment number {i}"}))
        for i in range(5)])
    partition, offset = metas[3]
    resolver = Resolver(kafka_bootstrap, Settings())
    lines = await explain(alert(Ref(topic, partition, offset, "x3")), resolver)
    assert "'ordinary comment number 3'" in lines[0]
    assert resolver.texts[(topic, partition, offset)] == "ordinary comment number 3"
