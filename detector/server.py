"""A small HTTP server for /metrics, /healthz and /readyz (asyncio streams, no framework).

`/healthz` answers 200 while the event loop runs and the pipeline task is alive;
`/readyz` answers 200 once the consumer joined its group (with or without partitions) and
the embedder is not in a fatal state; `/metrics` is the Prometheus text exposition of the
detector's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from detector.metrics import Metrics

Check = Callable[[], tuple[bool, str]]
MAX_REQUEST_LINE = 8192


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
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers are not needed for these routes
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            status, body, ctype = self._route(parts[0] if parts else "", path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, bytes, str]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", "text/plain"
        if path == "/metrics":
            return "200 OK", generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST
        if path in ("/healthz", "/readyz"):
            ok, why = (self.live if path == "/healthz" else self.ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            return status, (why + "\n").encode(), "text/plain; charset=utf-8"
        return "404 Not Found", b"not found\n", "text/plain"
