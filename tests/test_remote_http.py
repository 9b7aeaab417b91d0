"""The HTTP embedders against the real local fake API server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import structlog.testing
from pydantic import SecretStr

from detector.config import EmbeddingSettings
from detector.dev.fakeapi import FakeEmbeddingServer, fake_embedding
from detector.embedders.remote import DashScopeEmbedder, OpenAIEmbedder
from detector.errors import BatchRejectedError, FatalEmbeddingError

KEY = "sk-fake-api"


@pytest.fixture
def server() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=KEY, hang_s=5.0) as srv:
        yield srv


def dash(server: FakeEmbeddingServer, **overrides: object) -> DashScopeEmbedder:
    settings = EmbeddingSettings(backend="dashscope", model="text-embedding-v4", dimension=256,
                                 base_url=server.base_url, timeout_s=1.0, retry_base_s=0.05,
                                 retry_max_s=0.2, retry_deadline_s=10, **overrides)
    return DashScopeEmbedder(settings, SecretStr(KEY))


def expected(texts: list[str], dimension: int = 256) -> np.ndarray:
    return np.stack([fake_embedding(t, dimension) for t in texts])


TEXTS = ["great blender", "delivery was late", "客服很好", "the keyboard is loud"]


class TestAgainstFakeServer:
    async def test_both_shapes_return_the_servers_vectors(self, server: FakeEmbeddingServer
                                                          ) -> None:
        """DashScope native and OpenAI-compatible clients get the same vectors, in order."""
        async with dash(server) as emb:
            native = await emb.embed(TEXTS)
        settings = EmbeddingSettings(backend="openai", model="text-embedding-v4", dimension=256,
                                     base_url=server.openai_base_url)
        async with OpenAIEmbedder(settings, SecretStr(KEY)) as emb:
            compatible = await emb.embed(TEXTS)
        np.testing.assert_allclose(native, expected(TEXTS), atol=1e-6)
        np.testing.assert_allclose(compatible, native, atol=1e-6)

    @pytest.mark.parametrize("fault", ["429", "429_no_retry_after", "rate_quota_400", "500",
                                       "hang", "reset", "truncated", "not_json"])
    async def test_transient_faults_are_retried_to_success(
        self, server: FakeEmbeddingServer, fault: str
    ) -> None:
        """each transient fault, twice in a row, still ends in the right vectors."""
        server.inject(fault, count=2)
        async with dash(server) as emb:
            out = await emb.embed(TEXTS)
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
        assert server.stats.faults[fault] == 2
        assert server.stats.ok == 1

    async def test_shuffled_text_index_is_reordered(self, server: FakeEmbeddingServer) -> None:
        """results come back shuffled and are put in input order."""
        server.inject("shuffle")
        async with dash(server) as emb:
            out = await emb.embed(TEXTS)
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)

    async def test_content_rejection_and_fatal_errors(self, server: FakeEmbeddingServer
                                                      ) -> None:
        """DataInspectionFailed rejects the batch; a bad key or arrears is fatal."""
        server.reject_marker = "FORBIDDEN"
        async with dash(server) as emb:
            with pytest.raises(BatchRejectedError) as rejected:
                await emb.embed(["fine", "FORBIDDEN words"])
            assert rejected.value.code == "DataInspectionFailed"
            server.inject("arrearage")
            with pytest.raises(FatalEmbeddingError) as arrears:
                await emb.embed(["fine"])
            assert arrears.value.code == "Arrearage"
        wrong = DashScopeEmbedder(EmbeddingSettings(
            backend="dashscope", model="text-embedding-v4", dimension=256,
            base_url=server.base_url), SecretStr("sk-wrong"))
        async with wrong:
            with pytest.raises(FatalEmbeddingError, match="InvalidApiKey"):
                await wrong.embed(["fine"])

    async def test_server_validates_like_the_real_service(self, server: FakeEmbeddingServer
                                                          ) -> None:
        """a v3 request with a v4-only dimension is refused as InvalidParameter."""
        emb = DashScopeEmbedder(EmbeddingSettings(
            backend="dashscope", model="custom", dimension=2048, base_url=server.base_url),
            SecretStr(KEY))
        emb.settings = emb.settings.model_copy(update={"model": "text-embedding-v3"})
        async with emb:
            with pytest.raises(BatchRejectedError, match="dimension"):
                await emb.embed(["x"])

    async def test_concurrent_calls_reach_the_server_concurrently(
        self, server: FakeEmbeddingServer
    ) -> None:
        """8 concurrent embeds with 100 ms latency overlap on the pooled client."""
        server.latency_s = 0.1
        async with dash(server, concurrency=8) as emb:
            await asyncio.gather(*(emb.embed([f"text {i}"]) for i in range(8)))
        assert server.stats.peak_inflight == 8


class TestServedModel:
    async def test_warns_once_when_the_server_names_another_model(
        self, server: FakeEmbeddingServer
    ) -> None:
        """an OpenAI-compatible server answering with another `model` than the configured
        one is warned about once (names only), however many requests follow."""
        server.served_model = "intfloat/multilingual-e5-small"
        settings = EmbeddingSettings(backend="openai", model="text-embedding-v4",
                                     dimension=256, base_url=server.openai_base_url)
        with structlog.testing.capture_logs() as logs:
            async with OpenAIEmbedder(settings, SecretStr(KEY)) as emb:
                for _ in range(3):
                    await emb.embed(TEXTS)
        warnings = [e for e in logs if e["event"].startswith("the embedding server")]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["configured"] == "text-embedding-v4"
        assert warnings[0]["served"] == "intfloat/multilingual-e5-small"
        assert KEY not in str(warnings[0])

    async def test_no_warning_when_the_names_match(self, server: FakeEmbeddingServer) -> None:
        """the fake API echoes the requested model by default: nothing to warn about."""
        settings = EmbeddingSettings(backend="openai", model="text-embedding-v4",
                                     dimension=256, base_url=server.openai_base_url)
        with structlog.testing.capture_logs() as logs:
            async with OpenAIEmbedder(settings, SecretStr(KEY)) as emb:
                await emb.embed(TEXTS)
        assert not [e for e in logs if e["event"].startswith("the embedding server")]
