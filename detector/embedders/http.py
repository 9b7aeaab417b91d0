"""What both HTTP embedders share: the pooled client, retries, rate limits, accounting.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Self

import aiohttp
import httpx
import orjson
import structlog
from pydantic import SecretStr

from detector.config import EmbeddingSettings
from detector.embedders.base import Matrix, normalise_rows
from detector.embedders.client import DirectPoster, build_client
from detector.embedders.retry import RetryPolicy
from detector.errors import (
    BatchRejectedError,
    EmbeddingError,
    FatalEmbeddingError,
    RetriableEmbeddingError,
    ThrottledError,
)
from detector.io.records import estimate_tokens
from detector.metrics import Metrics

log = structlog.get_logger("detector.embedders")

Sleep = Callable[[float], Awaitable[None]]
Rows = list[list[float]] | Matrix  # JSON float lists, or rows already decoded by numpy
Clock = Callable[[], float]


class ClientState(enum.Enum):
    OPEN = 1
    CLOSED = 2


class TokenBucket:
    """A per-minute limit enforced continuously (DashScope meters per-second slices)."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 60.0)  # about one second's worth of burst
        self.level = self.capacity
        self.clock = clock
        self.updated = clock()

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available; takes it when that is now."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        amount = min(amount, self.capacity)  # a request larger than a burst still passes
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests/min and tokens/min buckets; `acquire` sleeps until both allow a call."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Clock, sleep: Sleep) -> None:
        self.requests = TokenBucket(requests_per_minute, clock) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, clock) if tokens_per_minute else None
        self.sleep = sleep
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if self.requests is None and self.tokens is None:
            return
        async with self._lock:  # first come, first served
            for bucket, amount in ((self.requests, 1.0), (self.tokens, float(tokens))):
                while bucket is not None:
                    delay = bucket.wait_for(amount)
                    if delay <= 0:
                        break
                    await self.sleep(delay)

    def refund(self, tokens: int) -> None:
        """Give back the tokens of a call the provider refused for quota: it billed none,
        and the retry takes them again."""
        if self.tokens is not None:
            self.tokens.give_back(tokens)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket with what the provider actually billed."""
        if self.tokens is not None and actual < estimated:
            self.tokens.give_back(estimated - actual)
        elif self.tokens is not None and actual > estimated:
            self.tokens.level -= actual - estimated


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HttpEmbedder:
    """Base of the DashScope and OpenAI-compatible embedders."""

    path = ""
    default_base_url = ""

    def __init__(
        self,
        settings: EmbeddingSettings,
        api_key: SecretStr,
        *,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._key = api_key
        self.metrics = metrics
        self.sleep = sleep
        self.clock = clock
        self.url = (settings.base_url or self.default_base_url).rstrip("/") + self.path
        self._client = build_client(
            settings, {"Authorization": f"Bearer {api_key.get_secret_value()}",
                       "Content-Type": "application/json"}, transport)
        self._poster = DirectPoster(self._client, self.url, settings.timeout_s,
                                    settings.connect_timeout_s)
        self._outcomes: dict[str, Any] = {}
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute,
                                   clock, sleep)
        self.retry = RetryPolicy.from_settings(settings)
        self.state = ClientState.OPEN

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.name!r}, url={self.url!r})"

    @property
    def name(self) -> str:
        return self.settings.model

    @property
    def dimension(self) -> int:
        return self.settings.dimension

    # -- what subclasses define ------------------------------------------------------
    def body(self, texts: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError

    def rows(self, payload: dict[str, Any], count: int) -> tuple[Rows, int]:
        """Vectors in input order, and the billed tokens (0 when not reported)."""
        raise NotImplementedError

    def classify(self, status: int, payload: dict[str, Any] | None,
                 headers: httpx.Headers) -> EmbeddingError:
        raise NotImplementedError

    # -- the shared machinery ------------------------------------------------------------
    async def embed(self, texts: Sequence[str]) -> Matrix:
        if self.state is ClientState.CLOSED:
            msg = f"{type(self).__name__} is closed"
            raise RuntimeError(msg)
        if not texts or any(not t.strip() for t in texts):
            msg = "empty texts never reach the embedding API"
            raise ValueError(msg)
        if len(texts) > self.settings.batch_size:
            msg = f"{len(texts)} texts exceed embedding.batch_size {self.settings.batch_size}"
            raise ValueError(msg)
        # Only a tokens-per-minute limit needs the estimate (it costs a regex per text).
        estimated = sum(estimate_tokens(t) for t in texts) if self.limiter.tokens else 0
        started = self.clock()
        attempt = 0
        while True:
            await self.limiter.acquire(estimated)
            try:
                vectors, tokens = await self._request(texts)
            except EmbeddingError as exc:
                self._count(_outcome(exc))
                if isinstance(exc, ThrottledError):
                    self.limiter.refund(estimated)
                if not exc.retriable:
                    raise
                attempt += 1
                delay = self.retry.delay(attempt, getattr(exc, "retry_after", None))
                if not self.retry.within(started, self.clock(), delay):
                    raise
                log.info("embedding request failed, retrying", code=exc.code,
                         status=exc.status, error=str(exc), retry_in_s=round(delay, 3))
                await self.sleep(delay)
                continue
            self._count("ok")
            self.limiter.settle(estimated, tokens or estimated)
            if self.metrics is not None and tokens:
                self.metrics.tokens.inc(tokens)
                self.metrics.cost.inc(tokens * self.settings.price_per_million_tokens / 1e6)
            got = len(vectors[0]) if len(vectors) else 0
            matrix = normalise_rows(vectors, self.dimension) if got == self.dimension else None
            if matrix is None:
                msg = (f"{self.name} returned {got}-dimensional embeddings, configured "
                       f"embedding.dimension is {self.dimension}")
                raise FatalEmbeddingError(msg)
            return matrix

    async def _request(self, texts: Sequence[str]) -> tuple[Rows, int]:
        try:
            response = await self._poster.post(orjson.dumps(self.body(texts)))
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(self.url, exc) from None
        payload: dict[str, Any] | None
        try:
            parsed = orjson.loads(response.content)
            payload = parsed if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            payload = None
        if response.status_code != 200:
            raise self.classify(response.status_code, payload, response.headers)
        if payload is None:
            msg = f"malformed response body from {self.url} (status 200, not a JSON object)"
            raise RetriableEmbeddingError(msg, status=200)
        try:
            return self.rows(payload, len(texts))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            msg = f"unexpected response shape from {self.url}: {type(exc).__name__}: {exc}"
            raise RetriableEmbeddingError(msg, status=200) from None

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            counter = self._outcomes.get(outcome)
            if counter is None:  # labels() takes a lock and builds a key on every call
                counter = self._outcomes[outcome] = self.metrics.embed_requests.labels(
                    outcome=outcome)
            counter.inc()

    def scrub(self, text: str) -> str:
        """Never let the key through, even if a server echoes it back."""
        return text.replace(self._key.get_secret_value(), "***")

    async def aclose(self) -> None:
        if self.state is ClientState.OPEN:
            self.state = ClientState.CLOSED
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _transport_error(url: str, exc: BaseException) -> RetriableEmbeddingError:
    """A retriable error naming what failed on the wire. httpx-aiohttp maps any aiohttp
    connection error to `httpx.ConnectTimeout`, so the cause decides what is a timeout."""
    cause = exc.__cause__ or exc
    timed_out = isinstance(cause, TimeoutError) or (
        isinstance(exc, httpx.TimeoutException) and not isinstance(cause, aiohttp.ClientError))
    if timed_out:
        return RetriableEmbeddingError(f"request to {url} timed out")
    return RetriableEmbeddingError(f"connection to {url} failed: {type(cause).__name__}")


def _outcome(exc: EmbeddingError) -> str:
    if isinstance(exc, ThrottledError):
        return "throttled"
    if isinstance(exc, FatalEmbeddingError):
        return "fatal"
    if isinstance(exc, BatchRejectedError):
        return "rejected"
    return "retried" if exc.retriable else "error"
