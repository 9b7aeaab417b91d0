"""The health/metrics HTTP server: three routes, no framework."""

from __future__ import annotations

import asyncio
import gzip

from detector.io.server import HealthServer
from detector.metrics import Metrics


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


async def exchange(port: int, request: str) -> tuple[str, dict[str, str], bytes]:
    """Send a raw request; return the status line, headers (lower-case) and raw body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return status, headers, body


class TestNegotiation:
    async def test_head_sends_headers_without_a_body(self) -> None:
        """HEAD answers with GET's status and Content-Length, and no body bytes."""
        server = HealthServer("127.0.0.1", 0, Metrics(), live=lambda: (True, "ok"),
                              ready=lambda: (False, "not yet"))
        async with server:
            for path, code in (("/healthz", "200"), ("/readyz", "503"), ("/metrics", "200")):
                status, headers, body = await exchange(
                    server.port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n")
                assert status.split()[1] == code
                assert body == b""
                assert int(headers["content-length"]) > 0

    async def test_metrics_honours_openmetrics_and_gzip(self) -> None:
        """OpenMetrics when the Accept header asks for it (with its # EOF), Prometheus
        text otherwise; gzip only when Accept-Encoding allows it."""
        metrics = Metrics()
        metrics.alerts.inc(2)
        server = HealthServer("127.0.0.1", 0, metrics, live=lambda: (True, "ok"),
                              ready=lambda: (True, "ok"))
        async with server:
            status, headers, body = await exchange(
                server.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n"
                "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n")
            assert status.split()[1] == "200"
            assert headers["content-type"].startswith("application/openmetrics-text")
            assert body.rstrip().endswith(b"# EOF")
            assert b"detector_alerts_total 2.0" in body
            assert "content-encoding" not in headers
            _, headers, body = await exchange(
                server.port, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n"
                "Accept-Encoding: gzip, deflate\r\n\r\n")
            assert headers["content-encoding"] == "gzip"
            assert headers["content-type"].startswith("text/plain")
            text = gzip.decompress(body)
            assert int(headers["content-length"]) == len(body)
            assert b"detector_alerts_total 2.0" in text
            assert b"# EOF" not in text
            _, headers, _ = await exchange(
                server.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n"
                "Accept-Encoding: gzip;q=0, identity\r\n\r\n")
            assert "content-encoding" not in headers

    async def test_process_metrics_in_the_private_registry(self) -> None:
        """CPU seconds, resident memory and open file descriptors are scraped too."""
        server = HealthServer("127.0.0.1", 0, Metrics(), live=lambda: (True, "ok"),
                              ready=lambda: (True, "ok"))
        async with server:
            _, _, body = await exchange(server.port, "GET /metrics HTTP/1.1\r\n\r\n")
        for name in (b"process_cpu_seconds_total", b"process_resident_memory_bytes",
                     b"process_open_fds"):
            assert name in body
