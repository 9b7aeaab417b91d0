"""A minimal HTTP forward proxy for tests: absolute-URI requests are relayed to their
origin over a fresh connection each, and counted. HTTP/1.1 with Content-Length only."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit


class ForwardProxy:
    """Runs on its own event loop in a thread; a context manager; `requests` counts."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        if not self._ready.wait(10):
            msg = "proxy did not start"
            raise RuntimeError(msg)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, target, version = line.decode("latin-1").split(" ", 2)
                head, length = await _headers(reader)
                body = await reader.readexactly(length)
                url = urlsplit(target)
                self.requests += 1
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
                path = url.path + (f"?{url.query}" if url.query else "")
                kept = [h for h in head if not h.lower().startswith(b"proxy-")]
                up_writer.write(f"{method} {path} {version}".encode("latin-1")
                                + b"".join(kept) + b"\r\n" + body)
                status = await up_reader.readline()
                reply, reply_length = await _headers(up_reader)
                reply_body = await up_reader.readexactly(reply_length)
                up_writer.close()
                writer.write(status + b"".join(reply) + b"\r\n" + reply_body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def _headers(reader: asyncio.StreamReader) -> tuple[list[bytes], int]:
    lines: list[bytes] = []
    length = 0
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        lines.append(raw)
        name, _, value = raw.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return lines, length
