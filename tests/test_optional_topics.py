"""Readers of optional topics (detector.io.optional) on the real broker: a topic that does
not exist when the reader starts (Strimzi creates topics later) is waited for, reported
in a metric and /readyz, and read once it appears: no label is lost."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from detector.commands.run import _ready
from detector.config import Settings
from detector.model.baselines import Contribution
from detector.state.store import ReplicaRecord, StateStore
from tests.helpers import DIM, Replica, create_topic, label, metric, produce, unique, unit, wait_for

pytestmark = pytest.mark.kafka


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled(), "the reader ended by itself"


async def test_the_label_reader_waits_for_a_missing_feedback_topic_and_applies_its_labels(
        kafka_bootstrap: str) -> None:
    """it used to log one warning and stop for good: labels were silently lost."""
    feedback = unique("feedback")
    r = Replica()
    r.stage.settings = Settings(name="fb", kafka={"bootstrap_servers": kafka_bootstrap},
                                feedback={"enabled": True, "topic": feedback, "weight": 50})
    r.score(unit(r.other * 2.0 + np.random.default_rng(3).normal(size=(3, DIM)) * 0.3))
    missing = {"reader": "feedback", "topic": feedback}
    reader = asyncio.create_task(r.stage.run())
    try:
        await wait_for(lambda: metric(r.metrics, "detector_topic_missing", missing) == 1,
                       deadline_s=30, what="the reader reports the missing topic")
        assert not reader.done()
        joined = SimpleNamespace(fatal=None, joined=True, owned=frozenset({0}))
        ok, why = _ready(joined, r.metrics.missing_topics)  # type: ignore[arg-type]
        assert ok
        assert f"waiting for topic {feedback!r}" in why
        await create_topic(kafka_bootstrap, feedback)
        await produce(kafka_bootstrap, feedback, [(None, label(
            source={"topic": "comments", "partition": 0, "offset": 2}, label="normal"))])
        await wait_for(lambda: metric(r.metrics, "detector_feedback_labels_total",
                                      {"outcome": "taught", "reason": "cached"}) == 1,
                       deadline_s=60, what="the label published after the topic appeared")
        assert metric(r.metrics, "detector_topic_missing", missing) == 0
        assert _ready(joined, r.metrics.missing_topics) == (True, "ok")  # type: ignore[arg-type]
        assert r.shared.own.updates == 1
        assert r.stage.positions == {0: 1}
    finally:
        await cancel(reader)


async def test_the_state_reader_waits_for_a_missing_state_topic(kafka_bootstrap: str) -> None:
    """with create_topics false and no state topic yet, following used to read nothing
    forever; it now waits and merges the other replicas' records once it exists."""
    r = Replica()
    state = unique("state")
    settings = Settings(name="fb", kafka={"bootstrap_servers": kafka_bootstrap,
                                          "create_topics": False},
                        state={"enabled": True, "topic": state})
    store = StateStore(settings)
    assert await store.load() == {}
    follower = asyncio.create_task(store.follow(r.shared, metrics=r.metrics))
    missing = {"reader": "state", "topic": state}
    try:
        await wait_for(lambda: metric(r.metrics, "detector_topic_missing", missing) == 1,
                       deadline_s=30, what="the follower reports the missing topic")
        await create_topic(kafka_bootstrap, state)
        raw = ReplicaRecord("r2", r.shared.base, r.shared.model, DIM, 0.3,
                            Contribution(unit(r.other) * 5, 5.0, 1), "t").to_bytes("fb")
        await produce(kafka_bootstrap, state, [(b"fb/r2", raw)])
        await wait_for(lambda: "r2" in r.shared.applied, deadline_s=60,
                       what="the other replica's record merged")
        assert metric(r.metrics, "detector_topic_missing", missing) == 0
    finally:
        await cancel(follower)
