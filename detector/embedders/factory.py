"""`build_embedder`: the embedder the configuration names (local model, DashScope,
OpenAI-compatible), with `embedding.text_prefix` applied in one place. Implementations
are imported on use, so the local model's libraries load only when the local backend is
chosen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from detector.embedders.base import Embedder, Matrix
from detector.errors import ConfigError

if TYPE_CHECKING:
    from detector.config import Settings
    from detector.metrics import Metrics


class PrefixedEmbedder:
    """Prepends `embedding.text_prefix` to every text: the one place it is applied, so
    the daemon, replay and calibrate (all built by `build_embedder`) embed alike."""

    def __init__(self, inner: Embedder, prefix: str) -> None:
        self.inner = inner
        self.text_prefix = prefix

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def embed(self, texts: Sequence[str]) -> Matrix:
        return await self.inner.embed([self.text_prefix + t for t in texts])

    async def aclose(self) -> None:
        await self.inner.aclose()


def build_embedder(settings: Settings, metrics: Metrics | None = None) -> Embedder:
    """The embedder the configuration names (remote ones share one pooled HTTP client),
    with `embedding.text_prefix` prepended to every text when one is set, behind the
    embedding cache unless `embedding.cache_entries` is 0 (the cache key includes the
    prefix)."""
    embedder = _backend(settings, metrics)
    prefix = settings.embedding.text_prefix
    if prefix:
        embedder = PrefixedEmbedder(embedder, prefix)
    entries = settings.embedding.cache_entries
    if not entries:
        return embedder
    from detector.embedders.cache import CachingEmbedder

    return CachingEmbedder(embedder, settings.embedding, entries, metrics)


def _backend(settings: Settings, metrics: Metrics | None) -> Embedder:
    backend = settings.embedding.backend
    if backend == "local":
        from detector.embedders.local import LocalEmbedder

        return LocalEmbedder(threads=settings.embedding.local_threads, metrics=metrics)
    if backend in ("dashscope", "openai"):
        from detector.embedders.remote import build_remote_embedder

        return build_remote_embedder(settings, metrics)
    msg = f"unknown embedding.backend {backend!r}"  # pragma: no cover - Literal forbids it
    raise ConfigError(msg)
