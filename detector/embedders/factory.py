"""`build_embedder`: the embedder the configuration names (local model, DashScope,
OpenAI-compatible). Implementations are imported on use, so the local model's
libraries load only when the local backend is chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detector.embedders.base import Embedder
from detector.errors import ConfigError

if TYPE_CHECKING:
    from detector.config import Settings
    from detector.metrics import Metrics


def build_embedder(settings: Settings, metrics: Metrics | None = None) -> Embedder:
    """The embedder the configuration names (remote ones share one pooled HTTP client),
    behind the embedding cache unless `embedding.cache_entries` is 0."""
    embedder = _build_backend(settings, metrics)
    entries = settings.embedding.cache_entries
    if not entries:
        return embedder
    from detector.embedders.cache import CachingEmbedder

    return CachingEmbedder(embedder, settings.embedding, entries, metrics)


def _build_backend(settings: Settings, metrics: Metrics | None) -> Embedder:
    backend = settings.embedding.backend
    if backend == "local":
        from detector.embedders.local import LocalEmbedder

        return LocalEmbedder(threads=settings.embedding.local_threads, metrics=metrics)
    if backend in ("dashscope", "openai"):
        from detector.embedders.remote import build_remote_embedder

        return build_remote_embedder(settings, metrics)
    msg = f"unknown embedding.backend {backend!r}"  # pragma: no cover - Literal forbids it
    raise ConfigError(msg)
