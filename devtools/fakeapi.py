"""A local embedding API for tests and benchmarks: DashScope and OpenAI shapes, with faults.

It validates requests the way the real services do (at most 10 texts, allowed
dimensions per model, `instruct` only with `text_type: query`, no empty text, the
Bearer key), returns deterministic embeddings (hashed character trigrams, so similar
texts get similar vectors), and injects latency and faults on demand: 429 with or
without Retry-After, `Throttling.RateQuota` as 400, 500, hangs, connection resets,
truncated or non-JSON bodies, shuffled `text_index`, `Arrearage`, `InvalidApiKey`, and
`DataInspectionFailed` for texts containing a marker. Steer it from Python
(`server.inject(...)`) or over HTTP (``POST /_control``); read ``GET /_stats``.

Each call's latency is drawn from `Latency`: fixed, lognormal (median, sigma), and a
fraction of stragglers at a fixed latency. A per-second quota (requests and tokens per
second, each second metered on its own as DashScope does) answers 429
``Throttling.RateQuota`` with Retry-After until the next second. The OpenAI shape
answers ``encoding_format: base64`` (little-endian float32), or refuses it with a 400
naming the field (``refuse_base64``), as some compatible servers do. Give it an
`ssl.SSLContext` to serve HTTPS.

    python -m devtools.fakeapi --port 8000 --latency-ms 100 --sigma 0.5 --api-key sk-test
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import math
import random
import ssl
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

DASHSCOPE_PATH = "/api/v1/services/embeddings/text-embedding/text-embedding"
OPENAI_PATH = "/v1/embeddings"
DIMENSIONS = {"text-embedding-v4": (2048, 1536, 1024, 768, 512, 256, 128, 64),
              "text-embedding-v3": (1024, 768, 512)}
FAULTS = ("429", "429_no_retry_after", "rate_quota_400", "500", "hang", "reset",
          "truncated", "not_json", "shuffle", "arrearage", "invalid_key", "wrong_dimension")


@functools.lru_cache(maxsize=8192)
def fake_embedding(text: str, dimension: int, common: float = 0.0) -> npt.NDArray[np.float32]:
    """A deterministic unit vector: signed hashes of the text's character trigrams (cached:
    the server's own CPU shares the machine with what it measures; never mutate it).

    `common` > 0 adds that multiple of one direction shared by every text before
    normalising, like models whose vectors all lie in a narrow cone (multilingual-e5:
    every pair of texts 0.7-0.9 similar): with ``common=2`` two texts' similarity is
    about ``0.8 + 0.2 * (their similarity without it)``.
    """
    padded = f"  {text.lower()}  "
    vec = np.zeros(dimension, dtype=np.float32)
    for i in range(len(padded) - 2):
        h = zlib.crc32(padded[i:i + 3].encode())
        vec[h % dimension] += 1.0 if (h >> 16) & 1 else -1.0
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        vec[0] = 1.0
    else:
        vec /= norm
    if common:
        vec = vec + np.float32(common) * _shared_direction(dimension)
        vec /= np.float32(np.linalg.norm(vec))
    return vec


@functools.lru_cache(maxsize=16)
def _shared_direction(dimension: int) -> npt.NDArray[np.float32]:
    """A fixed unit vector per dimension (the cone's axis for `common`)."""
    axis = np.random.default_rng(dimension).standard_normal(dimension).astype(np.float32)
    return axis / np.float32(np.linalg.norm(axis))


@dataclass
class Latency:
    """How long a call takes: `median_s`, times exp(sigma x N(0, 1)) when `sigma` > 0
    (lognormal), except a `straggler_fraction` of calls that take `straggler_s`."""

    median_s: float = 0.0
    sigma: float = 0.0
    straggler_fraction: float = 0.0
    straggler_s: float = 0.0

    def draw(self, rng: random.Random) -> float:
        if self.straggler_fraction and rng.random() < self.straggler_fraction:
            return self.straggler_s
        if self.sigma:
            return self.median_s * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        return self.median_s

    def mean_s(self) -> float:
        """The expected latency, for ceilings such as 10 x N / mean latency."""
        body = self.median_s * math.exp(self.sigma**2 / 2)
        return (1 - self.straggler_fraction) * body + self.straggler_fraction * self.straggler_s


class Quota:
    """Requests and tokens per second, each wall-clock second metered on its own."""

    def __init__(self, requests_per_s: float | None = None, tokens_per_s: float | None = None
                 ) -> None:
        self.requests_per_s = requests_per_s
        self.tokens_per_s = tokens_per_s
        self._second = -1
        self._requests = 0
        self._tokens = 0

    def admit(self, tokens: int, now: float) -> float | None:
        """None when the call fits this second's quota (and counts it), else seconds until
        the next second starts."""
        second = int(now)
        if second != self._second:
            self._second, self._requests, self._tokens = second, 0, 0
        over = ((self.requests_per_s is not None and self._requests + 1 > self.requests_per_s)
                or (self.tokens_per_s is not None and self._tokens
                    and self._tokens + tokens > self.tokens_per_s))
        if over:
            return second + 1 - now
        self._requests += 1
        self._tokens += tokens
        return None


@dataclass
class Stats:
    requests: int = 0
    ok: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    max_batch: int = 0
    inflight: int = 0
    peak_inflight: int = 0
    texts: int = 0
    tokens: int = 0
    throttled: int = 0
    base64: int = 0
    response_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "faults": self.faults,
                "max_batch": self.max_batch, "peak_inflight": self.peak_inflight,
                "texts": self.texts, "tokens": self.tokens, "throttled": self.throttled,
                "base64": self.base64, "response_bytes": self.response_bytes}


class FakeEmbeddingServer:
    """The server, on its own event loop in a background thread; a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = "sk-test",
                 latency_s: float = 0.0, hang_s: float = 60.0, *, common: float = 0.0,
                 ssl_context: ssl.SSLContext | None = None, seed: int = 0) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.latency = Latency(median_s=latency_s)
        self.quota = Quota()
        self.refuse_base64 = False
        self.hang_s = hang_s
        self.ssl_context = ssl_context
        self.reject_marker: str | None = None
        # The `model` OpenAI-shaped responses name (None: echo the request's, as OpenAI
        # does); servers such as vLLM answer with the name they serve under.
        self.served_model: str | None = None
        self.common = common  # shared component of every vector (see fake_embedding)
        self._rng = random.Random(seed)
        self.stats = Stats()
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def latency_s(self) -> float:
        """The fixed (or median) latency; setting it keeps sigma and stragglers."""
        return self.latency.median_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.latency.median_s = value

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def inject(self, fault: str, count: int = 1) -> None:
        """Make the next `count` requests fail with `fault` (one of FAULTS)."""
        if fault not in FAULTS:
            msg = f"unknown fault {fault!r}; known: {FAULTS}"
            raise ValueError(msg)
        with self._lock:
            self._faults.extend([fault] * count)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
        self.reject_marker = None

    def _next_fault(self) -> str | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeEmbeddingServer:
        self._thread = threading.Thread(target=self._run, name="fake-embedding-api",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            msg = "fake embedding server did not start"
            raise RuntimeError(msg)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port, backlog=256,
                                 ssl=self.ssl_context))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = self._server = None

    def __enter__(self) -> FakeEmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._respond(writer, method, path, headers, body):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, ssl.SSLError):
            return
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, method: str, path: str,
                       headers: dict[str, str], body: bytes) -> bool:
        """Write one response; False when the connection must close."""
        if path == "/_stats":
            return await _send(writer, 200, self.stats.to_json())
        if path == "/_control" and method == "POST":
            return await _send(writer, 200, self._control(orjson.loads(body or b"{}")))
        if path not in (DASHSCOPE_PATH, OPENAI_PATH) or method != "POST":
            return await _send(writer, 404, {"code": "NotFound", "message": path})
        self.stats.requests += 1
        self.stats.inflight += 1
        self.stats.peak_inflight = max(self.stats.peak_inflight, self.stats.inflight)
        try:
            delay = self.latency.draw(self._rng)
            if delay > 0:
                await asyncio.sleep(delay)
            return await self._embed(writer, path == OPENAI_PATH, headers, body)
        finally:
            self.stats.inflight -= 1

    def _control(self, command: dict[str, Any]) -> dict[str, Any]:
        if "latency_ms" in command:
            self.latency_s = float(command["latency_ms"]) / 1000
        if "sigma" in command:
            self.latency.sigma = float(command["sigma"])
        if "straggler_fraction" in command:
            self.latency.straggler_fraction = float(command["straggler_fraction"])
            self.latency.straggler_s = float(command.get("straggler_ms", 0)) / 1000
        if "requests_per_s" in command or "tokens_per_s" in command:
            self.quota = Quota(command.get("requests_per_s"), command.get("tokens_per_s"))
        if "refuse_base64" in command:
            self.refuse_base64 = bool(command["refuse_base64"])
        if "fault" in command:
            self.inject(str(command["fault"]), int(command.get("count", 1)))
        if "reject_marker" in command:
            self.reject_marker = command["reject_marker"]
        if "served_model" in command:
            self.served_model = command["served_model"]
        if "common" in command:
            self.common = float(command["common"])
        if command.get("clear"):
            self.clear()
        return {"ok": True, "latency_ms": self.latency_s * 1000, "queued": len(self._faults)}

    async def _embed(self, writer: asyncio.StreamWriter, openai: bool, headers: dict[str, str],
                     body: bytes) -> bool:
        fault = self._next_fault()
        if fault is not None:
            self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
            handled = await self._fault(writer, fault, openai)
            if handled is not None:
                return handled
        if headers.get("authorization") != f"Bearer {self.api_key}" or fault == "invalid_key":
            return await _error(writer, openai, 401, "InvalidApiKey", "Invalid API-key provided.")
        try:
            request = orjson.loads(body)
            model = request["model"]
            texts = request["input"] if openai else request["input"]["texts"]
            params = {} if openai else request.get("parameters", {})
            dimension = int(request.get("dimensions", 1024) if openai
                            else params.get("dimension", 1024))
            encoding = request.get("encoding_format", "float") if openai else "float"
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return await _error(writer, openai, 400, "InvalidParameter", "malformed request")
        problem = self._invalid(model, texts, params, dimension)
        if problem is None and encoding not in ("float", "base64"):
            problem = f"encoding_format must be float or base64, got {encoding!r}"
        if problem is None and encoding == "base64" and self.refuse_base64:
            problem = "encoding_format base64 is not supported by this server"
        if problem is not None:
            return await _error(writer, openai, 400, "InvalidParameter", problem)
        if self.reject_marker and any(self.reject_marker in t for t in texts):
            return await _error(writer, openai, 400, "DataInspectionFailed",
                                "Input data may contain inappropriate content.")
        tokens = sum(max(1, len(t) // 3) for t in texts)
        wait = self.quota.admit(tokens, time.time())
        if wait is not None:
            self.stats.throttled += 1
            return await _error(writer, openai, 429, "Throttling.RateQuota",
                                "Requests rate limit exceeded, please try again later.",
                                headers={"Retry-After": f"{wait:.3f}"})
        self.stats.ok += 1
        self.stats.texts += len(texts)
        self.stats.tokens += tokens
        self.stats.max_batch = max(self.stats.max_batch, len(texts))
        out_dim = dimension + 1 if fault == "wrong_dimension" else dimension
        vectors = [fake_embedding(t, out_dim, self.common) for t in texts]
        order = list(range(len(texts)))
        if fault == "shuffle":
            random.Random(len(texts)).shuffle(order)
        if openai:
            rows: list[Any] = vectors
            if encoding == "base64":
                self.stats.base64 += 1
                rows = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
            payload: dict[str, Any] = {
                "object": "list", "model": self.served_model or model,
                "data": [{"object": "embedding", "index": i, "embedding": rows[i]}
                         for i in order],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        else:
            payload = {"output": {"embeddings": [{"text_index": i, "embedding": vectors[i]}
                                                 for i in order]},
                       "usage": {"total_tokens": tokens}, "request_id": "fake"}
        encoded = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        self.stats.response_bytes += len(encoded)
        return await _send_raw(writer, 200, encoded, "application/json")

    def _invalid(self, model: str, texts: object, params: dict[str, Any], dimension: int
                 ) -> str | None:
        if not isinstance(texts, list) or not texts:
            return "input must be a non-empty list of texts"
        if len(texts) > 10:
            return f"batch size is invalid, it should not be larger than 10: {len(texts)}"
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            return "input contains an empty text"
        allowed = DIMENSIONS.get(model)
        if allowed is not None and dimension not in allowed:
            return f"dimension {dimension} is not supported by {model}"
        if params.get("instruct") and params.get("text_type") != "query":
            return "instruct is only supported with text_type query"
        return None

    async def _fault(self, writer: asyncio.StreamWriter, fault: str, openai: bool
                     ) -> bool | None:
        """Answer with the fault; None when the request should continue (shuffle...)."""
        if fault == "429":
            return await _error(writer, openai, 429, "Throttling", "Requests throttled.",
                                headers={"Retry-After": "0.2"})
        if fault == "429_no_retry_after":
            return await _error(writer, openai, 429, "Throttling", "Requests throttled.")
        if fault == "rate_quota_400":
            return await _error(writer, openai, 400, "Throttling.RateQuota",
                                "Requests rate limit exceeded, please try again later.")
        if fault == "500":
            return await _error(writer, openai, 500, "InternalError", "An internal error.")
        if fault == "arrearage":
            return await _error(writer, openai, 400, "Arrearage",
                                "Access denied, please make sure your account is in good "
                                "standing.")
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
            return False
        if fault == "reset":
            transport = writer.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket
                import struct

                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return False
        if fault == "truncated":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 400\r\n\r\n{\"output\": {\"embeddings\": [")
            await writer.drain()
            return False
        if fault == "not_json":
            return await _send_raw(writer, 200, b"<html>upstream gateway error</html>",
                                   "text/html")
        return None


async def _error(writer: asyncio.StreamWriter, openai: bool, status: int, code: str,
                 message: str, *, headers: dict[str, str] | None = None) -> bool:
    body: dict[str, Any] = (
        {"error": {"message": message, "type": code, "code": code}} if openai
        else {"code": code, "message": message, "request_id": "fake"})
    return await _send(writer, status, body, headers)


async def _send(writer: asyncio.StreamWriter, status: int, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> bool:
    return await _send_raw(writer, status, orjson.dumps(body), "application/json", headers)


async def _send_raw(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str,
                    headers: dict[str, str] | None = None) -> bool:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\n{extra}\r\n".encode("latin-1") + body)
    await writer.drain()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.fakeapi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed, or the median")
    parser.add_argument("--sigma", type=float, default=0.0, help="lognormal sigma (0: fixed)")
    parser.add_argument("--straggler-fraction", type=float, default=0.0)
    parser.add_argument("--straggler-ms", type=float, default=0.0)
    parser.add_argument("--requests-per-s", type=float, default=None)
    parser.add_argument("--tokens-per-s", type=float, default=None)
    parser.add_argument("--refuse-base64", action="store_true")
    parser.add_argument("--api-key", default="sk-test")
    parser.add_argument("--common", type=float, default=0.0,
                        help="shared component of every vector: 2 puts all similarities "
                             "near 0.8, like multilingual-e5")
    args = parser.parse_args(argv)
    server = FakeEmbeddingServer(args.host, args.port, args.api_key, args.latency_ms / 1000,
                                 common=args.common)
    server.latency = Latency(args.latency_ms / 1000, args.sigma, args.straggler_fraction,
                             args.straggler_ms / 1000)
    server.quota = Quota(args.requests_per_s, args.tokens_per_s)
    server.refuse_base64 = args.refuse_base64
    with server:
        print(f"URL={server.base_url}", flush=True)
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
