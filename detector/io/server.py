"""A small HTTP server for /metrics, /healthz and /readyz (asyncio streams, no framework).

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import Callable

from prometheus_client.exposition import choose_encoder

from detector.metrics import Metrics

Check = Callable[[], tuple[bool, str]]
MAX_REQUEST_LINE = 8192
MAX_HEADERS = 100


class HealthServer:
    """Serves the three routes until closed; an async context manager."""

    def __init__(self, host: str, port: int, metrics: Metrics, live: Check, ready: Check):
        self.host = host
        self.port = port
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request_line = await reader.readline()
                headers = await _read_headers(reader)
            parts = request_line.decode("latin-1").split()
            method = parts[0] if parts else ""
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            status, body, ctype = self._route(method, path, headers.get("accept", ""))
            extra = ""
            if path == "/metrics" and status.startswith("200"):
                extra = "Vary: Accept, Accept-Encoding\r\n"
                if _accepts_gzip(headers.get("accept-encoding", "")):
                    body = gzip.compress(body, compresslevel=6)
                    extra += "Content-Encoding: gzip\r\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, method: str, path: str, accept: str) -> tuple[str, bytes, str]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", "text/plain"
        if path == "/metrics":
            encoder, ctype = choose_encoder(accept)
            return "200 OK", encoder(self.metrics.registry), ctype
        if path in ("/healthz", "/readyz"):
            ok, why = (self.live if path == "/healthz" else self.ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            return status, (why + "\n").encode(), "text/plain; charset=utf-8"
        return "404 Not Found", b"not found\n", "text/plain"


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """Header fields by lower-case name, up to the blank line (at most MAX_HEADERS)."""
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    msg = "too many header fields"
    raise ValueError(msg)


def _accepts_gzip(accept_encoding: str) -> bool:
    """gzip listed in Accept-Encoding without q=0."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() in ("gzip", "*"):
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                           for p in params)
    return False
