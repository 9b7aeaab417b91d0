"""The pooled `httpx.AsyncClient` of the hosted embedders, on the configured transport.

Design notes: docs/design/modules.md.
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
