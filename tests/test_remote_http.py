"""The HTTP embedders against the real local fake API server on 127.0.0.1, on both HTTP
transports (aiohttp under httpx, and plain httpx): faults, TLS, proxies, base64."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog.testing
from pydantic import SecretStr

from detector.config import EmbeddingSettings
from detector.embedders.client import tls_context
from detector.embedders.remote import DashScopeEmbedder, OpenAIEmbedder
from detector.errors import BatchRejectedError, FatalEmbeddingError, RetriableEmbeddingError
from devtools.fakeapi import FakeEmbeddingServer, fake_embedding
from tests.proxy import ForwardProxy
from tests.tls import Certs, make_certs

KEY = "sk-fake-api"
TRANSPORTS = ["aiohttp", "httpx"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both values of embedding.http_transport."""
    value: str = request.param
    return value


@pytest.fixture
def server() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=KEY, hang_s=5.0) as srv:
        yield srv


def settings_for(server: FakeEmbeddingServer, transport: str, **overrides: Any
                 ) -> EmbeddingSettings:
    values: dict[str, Any] = {
        "backend": "dashscope", "model": "text-embedding-v4", "dimension": 256,
        "base_url": server.base_url, "timeout_s": 1.0, "retry_base_s": 0.05,
        "retry_max_s": 0.2, "retry_deadline_s": 10, "http_transport": transport, **overrides}
    return EmbeddingSettings(**values)


def dash(server: FakeEmbeddingServer, transport: str, **overrides: Any) -> DashScopeEmbedder:
    return DashScopeEmbedder(settings_for(server, transport, **overrides), SecretStr(KEY))


def openai(server: FakeEmbeddingServer, transport: str, **overrides: Any) -> OpenAIEmbedder:
    settings = settings_for(server, transport, backend="openai",
                            base_url=server.openai_base_url, **overrides)
    return OpenAIEmbedder(settings, SecretStr(KEY))


def expected(texts: list[str], dimension: int = 256) -> np.ndarray:
    return np.stack([fake_embedding(t, dimension) for t in texts])


TEXTS = ["great blender", "delivery was late", "客服很好", "the keyboard is loud"]


class TestAgainstFakeServer:
    async def test_both_shapes_return_the_servers_vectors(
        self, server: FakeEmbeddingServer, transport: str
    ) -> None:
        """DashScope native and OpenAI-compatible (base64) clients get the same vectors."""
        async with dash(server, transport) as emb:
            native = await emb.embed(TEXTS)
        async with openai(server, transport) as emb:
            compatible = await emb.embed(TEXTS)
        np.testing.assert_allclose(native, expected(TEXTS), atol=1e-6)
        np.testing.assert_allclose(compatible, native, atol=1e-6)
        assert server.stats.base64 == 1

    @pytest.mark.parametrize("fault", ["429", "429_no_retry_after", "rate_quota_400", "500",
                                       "hang", "reset", "truncated", "not_json"])
    async def test_transient_faults_are_retried_to_success(
        self, server: FakeEmbeddingServer, transport: str, fault: str
    ) -> None:
        """each transient fault, twice in a row, still ends in the right vectors."""
        server.inject(fault, count=2)
        async with dash(server, transport) as emb:
            out = await emb.embed(TEXTS)
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
        assert server.stats.faults[fault] == 2
        assert server.stats.ok == 1

    async def test_shuffled_text_index_is_reordered(self, server: FakeEmbeddingServer,
                                                    transport: str) -> None:
        """results come back shuffled and are put in input order."""
        server.inject("shuffle")
        async with dash(server, transport) as emb:
            out = await emb.embed(TEXTS)
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)

    async def test_content_rejection_and_fatal_errors(self, server: FakeEmbeddingServer,
                                                      transport: str) -> None:
        """DataInspectionFailed rejects the batch; a bad key or arrears is fatal."""
        server.reject_marker = "FORBIDDEN"
        async with dash(server, transport) as emb:
            with pytest.raises(BatchRejectedError) as rejected:
                await emb.embed(["fine", "FORBIDDEN words"])
            assert rejected.value.code == "DataInspectionFailed"
            server.inject("arrearage")
            with pytest.raises(FatalEmbeddingError) as arrears:
                await emb.embed(["fine"])
            assert arrears.value.code == "Arrearage"
        wrong = DashScopeEmbedder(settings_for(server, transport), SecretStr("sk-wrong"))
        async with wrong:
            with pytest.raises(FatalEmbeddingError, match="InvalidApiKey"):
                await wrong.embed(["fine"])

    async def test_server_validates_like_the_real_service(self, server: FakeEmbeddingServer,
                                                          transport: str) -> None:
        """a v3 request with a v4-only dimension is refused as InvalidParameter."""
        emb = DashScopeEmbedder(settings_for(server, transport, model="custom", dimension=2048),
                                SecretStr(KEY))
        emb.settings = emb.settings.model_copy(update={"model": "text-embedding-v3"})
        async with emb:
            with pytest.raises(BatchRejectedError, match="dimension"):
                await emb.embed(["x"])

    async def test_concurrent_calls_reach_the_server_concurrently(
        self, server: FakeEmbeddingServer, transport: str
    ) -> None:
        """8 concurrent embeds with 100 ms latency overlap on the pooled client."""
        server.latency_s = 0.1
        async with dash(server, transport, concurrency=8) as emb:
            await asyncio.gather(*(emb.embed([f"text {i}"]) for i in range(8)))
        assert server.stats.peak_inflight == 8

    async def test_the_quota_answers_rate_quota_and_the_retry_gets_through(
        self, server: FakeEmbeddingServer, transport: str
    ) -> None:
        """with 2 requests per second allowed, the third of a burst of 3 is throttled
        (429 Throttling.RateQuota, Retry-After to the next second) and then succeeds."""
        server.quota.requests_per_s = 2
        async with dash(server, transport) as emb:
            outs = await asyncio.gather(*(emb.embed([t]) for t in TEXTS[:3]))
        assert server.stats.throttled >= 1
        assert server.stats.ok == 3
        np.testing.assert_allclose(np.vstack(outs), expected(TEXTS[:3]), atol=1e-6)


class TestBase64:
    async def test_base64_and_float_give_identical_vectors(
        self, server: FakeEmbeddingServer, transport: str
    ) -> None:
        """base64 is asked by default and decodes to exactly the float answer's rows (the
        byte and CPU comparison, on dense vectors, is bench/embed_micro.py)."""
        async with openai(server, transport) as emb:
            compact = await emb.embed(TEXTS)
            emb.encoding = "float"
            decimal = await emb.embed(TEXTS)
        np.testing.assert_array_equal(compact, decimal)
        assert server.stats.base64 == 1
        assert server.stats.ok == 2

    async def test_a_server_refusing_base64_is_noticed_once_then_float_is_used(
        self, server: FakeEmbeddingServer, transport: str
    ) -> None:
        """the first call gets the 400 and is resent as float at once; later calls ask for
        float directly, so the server sees one refusal in all."""
        server.refuse_base64 = True
        async with openai(server, transport) as emb:
            first = await emb.embed(TEXTS)
            second = await emb.embed(TEXTS[:2])
            assert emb.encoding == "float"
        np.testing.assert_allclose(first, expected(TEXTS), atol=1e-6)
        np.testing.assert_allclose(second, expected(TEXTS[:2]), atol=1e-6)
        assert server.stats.requests == 3
        assert server.stats.ok == 2
        assert server.stats.base64 == 0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("api-tls"))


@pytest.fixture
def tls_server(certs: Certs) -> Iterator[FakeEmbeddingServer]:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    with FakeEmbeddingServer(api_key=KEY, ssl_context=context) as srv:
        yield srv


class TestTlsAndProxies:
    async def test_ca_bundle_is_trusted(self, tls_server: FakeEmbeddingServer, transport: str,
                                        certs: Certs) -> None:
        """HTTPS to a server whose certificate the configured CA bundle signed."""
        async with dash(tls_server, transport, ca_bundle=certs.ca) as emb:
            out = await emb.embed(TEXTS)
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)

    async def test_an_unknown_ca_is_refused(self, tls_server: FakeEmbeddingServer,
                                            transport: str, certs: Certs) -> None:
        """without the CA (or with another one) the handshake fails and no request is
        answered; it is a retriable connection error, raised at the deadline."""
        for bundle in (None, certs.other_ca):
            async with dash(tls_server, transport, ca_bundle=bundle,
                            retry_deadline_s=0.3) as emb:
                with pytest.raises(RetriableEmbeddingError, match="connection to"):
                    await emb.embed(TEXTS)
        assert tls_server.stats.requests == 0

    async def test_verify_tls_false_accepts_any_certificate(
        self, tls_server: FakeEmbeddingServer, transport: str
    ) -> None:
        async with dash(tls_server, transport, verify_tls=False) as emb:
            out = await emb.embed(TEXTS)
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)

    def test_tls_context_reads_the_bundle(self, certs: Certs) -> None:
        """ca_bundle becomes an SSLContext (httpx deprecates a path string for verify)."""
        settings = EmbeddingSettings(ca_bundle=Path(certs.ca))
        context = tls_context(settings)
        assert not isinstance(context, bool)
        assert context.cert_store_stats()["x509_ca"] == 1
        assert tls_context(EmbeddingSettings(verify_tls=False)) is False

    async def test_requests_go_through_the_environments_proxy(
        self, server: FakeEmbeddingServer, transport: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTP_PROXY is honoured (trust_env) on both transports; NO_PROXY bypasses it."""
        for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        with ForwardProxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            async with dash(server, transport) as emb:
                out = await emb.embed(TEXTS)
            assert proxy.requests == 1
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            async with dash(server, transport) as emb:
                await emb.embed(TEXTS)
            assert proxy.requests == 1
        np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
        assert server.stats.ok == 2


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
