"""An embedding cache around any `Embedder`: repeated texts are embedded once.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from detector.config import EmbeddingSettings
from detector.embedders.base import Embedder, Matrix
from detector.io.records import estimate_tokens
from detector.metrics import Metrics


def cache_namespace(settings: EmbeddingSettings) -> bytes:
    """Everything besides the text that decides the vector, as the key's prefix."""
    parts = (settings.backend, settings.model, str(settings.dimension), settings.text_type,
             settings.instruct or "", settings.text_prefix)
    return "\x1f".join(parts).encode() + b"\x1e"


def cache_key(namespace: bytes, text: str) -> bytes:
    """The key of a text's vector in any embedding cache: a 16-byte hash of the
    `cache_namespace` of the settings and the text."""
    return hashlib.blake2b(namespace + text.encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


class LruRows:
    """Rows by key, least recently used first out; counts evictions."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evictions = 0
        self._rows: OrderedDict[bytes, Matrix] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> Matrix | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: bytes, row: Matrix) -> int:
        """Store a row; returns how many entries were evicted to make room."""
        self._rows[key] = row
        self._rows.move_to_end(key)
        evicted = 0
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
            evicted += 1
        self.evictions += evicted
        return evicted


class CachingEmbedder:
    """An `Embedder` that answers repeated texts from memory and sends the rest on."""

    def __init__(self, inner: Embedder, settings: EmbeddingSettings, entries: int,
                 metrics: Metrics | None = None) -> None:
        if entries < 1:
            msg = "a cache needs at least one entry (0 means: do not wrap)"
            raise ValueError(msg)
        self.inner = inner
        self.rows = LruRows(entries)
        self.metrics = metrics
        self.hits = self.misses = 0
        self.tokens_saved = 0
        self._price = settings.price_per_million_tokens / 1e6
        self._namespace = cache_namespace(settings)

    def __repr__(self) -> str:
        return f"CachingEmbedder({self.inner!r}, entries={self.rows.capacity})"

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def key(self, text: str) -> bytes:
        return cache_key(self._namespace, text)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        keys = [self.key(t) for t in texts]
        found: dict[bytes, Matrix] = {}
        send: dict[bytes, str] = {}  # first occurrence of each text not cached, in order
        for key, text in zip(keys, texts, strict=True):
            if key in found or key in send:
                continue
            row = self.rows.get(key)
            if row is None:
                send[key] = text
            else:
                found[key] = row
        if send:
            matrix = await self.inner.embed(list(send.values()))
            for i, key in enumerate(send):
                row = matrix[i].copy()  # do not keep the whole batch's array alive
                found[key] = row
                evicted = self.rows.put(key, row)
                if evicted and self.metrics is not None:
                    self.metrics.cache_evictions.inc(evicted)
        self._account(texts, list(send.values()))
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _account(self, texts: Sequence[str], sent: list[str]) -> None:
        """Every text not sent is a hit, and its tokens are saved (estimated as the rate
        limiter estimates them; the API bills what its own tokenizer counts)."""
        hits = len(texts) - len(sent)
        self.hits += hits
        self.misses += len(sent)
        if self.metrics is not None:
            self.metrics.cache_misses.inc(len(sent))
            self.metrics.cache_entries.set(len(self.rows))
        if not hits:
            return
        saved = sum(estimate_tokens(t) for t in texts) - sum(estimate_tokens(t) for t in sent)
        self.tokens_saved += saved
        if self.metrics is not None:
            self.metrics.cache_hits.inc(hits)
            self.metrics.tokens_saved.inc(saved)
            self.metrics.cost_saved.inc(saved * self._price)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> CachingEmbedder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
