"""The health/metrics HTTP server: three routes, no framework."""

from __future__ import annotations

import asyncio

from detector.metrics import Metrics
from detector.server import HealthServer


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


class TestHealthServer:
    async def test_routes(self) -> None:
        """healthz and readyz reflect their checks; metrics exposes the registry."""
        metrics = Metrics()
        metrics.alerts.inc(3)
        ready = [False]
        server = HealthServer("127.0.0.1", 0, metrics, live=lambda: (True, "ok"),
                              ready=lambda: (ready[0], "ok" if ready[0] else "no partitions"))
        async with server:
            assert await get(server.port, "/healthz") == (200, "ok\n")
            assert await get(server.port, "/readyz") == (503, "no partitions\n")
            ready[0] = True
            assert (await get(server.port, "/readyz"))[0] == 200
            status, body = await get(server.port, "/metrics")
            assert status == 200
            assert "detector_alerts_total 3.0" in body
            assert (await get(server.port, "/nope"))[0] == 404
            assert (await get(server.port, "/healthz", "POST"))[0] == 405
