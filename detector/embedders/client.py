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
"""

from __future__ import annotations

import ssl
from typing import Literal

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
