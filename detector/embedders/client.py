"""The pooled `httpx.AsyncClient` of the hosted embedders, on the configured transport.

`embedding.http_transport` picks what carries the requests under httpx's interface:
``aiohttp`` (default, PyPI `httpx-aiohttp`) or ``httpx`` (httpcore + anyio). Both get the
same pool size, timeouts, TLS context and proxies, so nothing but the per-request CPU
differs: httpcore's pool checks and anyio's cancellation bookkeeping cost several times
what aiohttp's connector does (bench/RESULTS.md, part 9).

TLS: ``embedding.ca_bundle`` trusts that CA file; ``verify_tls: false`` turns
verification off; otherwise certifi's bundle (or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
Proxies come from ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY`` through httpx's own
environment handling on both transports (`HttpxAiohttpClient` builds an aiohttp
transport per proxy mount).

`DirectPoster` sends each request straight to the transport the client chose for the
one URL an embedder posts to (its proxy mount, if any), with the client's headers and
timeouts: `AsyncClient.send` would add per request what an embedding call never uses
(auth flow, redirect loop, cookie extraction, URL merging), 15-20 % of the client's CPU
under py-spy.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from detector.config import EmbeddingSettings

Transport = Literal["aiohttp", "httpx"]


def tls_context(settings: EmbeddingSettings) -> ssl.SSLContext | bool:
    """What `verify=` gets: a context trusting the CA bundle, or a bool."""
    if settings.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    return settings.verify_tls


def build_client(settings: EmbeddingSettings, headers: dict[str, str],
                 transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client for one embedder; `transport` (tests) overrides the configured one."""
    cls = HttpxAiohttpClient if settings.http_transport == "aiohttp" else httpx.AsyncClient
    return cls(
        timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
        limits=httpx.Limits(max_connections=settings.concurrency,
                            max_keepalive_connections=settings.concurrency),
        headers=headers, verify=tls_context(settings), trust_env=True, transport=transport,
    )


class DirectPoster:
    """POSTs bodies to one URL through the client's transport for it; a response is read
    fully and closed before it is returned, as `AsyncClient.post` does."""

    def __init__(self, client: httpx.AsyncClient, url: str, timeout_s: float,
                 connect_timeout_s: float) -> None:
        self.url = httpx.URL(url)
        self.headers = client.headers
        # The transport `client.send` would pick: a proxy mount for this URL, or the default.
        self.transport: httpx.AsyncBaseTransport = client._transport_for_url(self.url)
        self.extensions: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout_s, connect=connect_timeout_s).as_dict()}

    async def post(self, body: bytes) -> httpx.Response:
        request = httpx.Request("POST", self.url, headers=self.headers, content=body,
                                extensions=self.extensions)
        response = await self.transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response
