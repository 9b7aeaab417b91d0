"""Shared fixtures: the real Kafka broker (tests.kafka_fixture) and the local model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog

from detector.embedders.local import LocalEmbedder

pytest_plugins = ["tests.kafka_fixture"]


@pytest.fixture(scope="session")
async def local_embedder() -> AsyncIterator[LocalEmbedder]:
    """One local model per test session (loading it takes about a second)."""
    embedder = LocalEmbedder()
    yield embedder
    await embedder.aclose()


@pytest.fixture(autouse=True, scope="session")
def _uncached_loggers() -> Iterator[None]:
    """In-process CLI runs configure structlog with loggers cached on first use; a logger
    cached in one test would bypass `capture_logs()` in every later test."""
    original = structlog.configure

    def configure(**settings: Any) -> None:
        original(**{**settings, "cache_logger_on_first_use": False})

    patch = pytest.MonkeyPatch()
    patch.setattr(structlog, "configure", configure)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults (a level filter set by one test's
    `configure_logging` must not hide another test's debug lines)."""
    yield
    structlog.reset_defaults()
