"""Shared fixtures: the real Kafka broker (tests.kafka_fixture) and the local model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from detector.embedders.local import LocalEmbedder

pytest_plugins = ["tests.kafka_fixture"]


@pytest.fixture(scope="session")
async def local_embedder() -> AsyncIterator[LocalEmbedder]:
    """One local model per test session (loading it takes about a second)."""
    embedder = LocalEmbedder()
    yield embedder
    await embedder.aclose()
