"""Remote embedders with httpx.MockTransport: request shapes, ordering, error classes,
Retry-After, deadlines, the rate limiter, and that the key never leaks."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import httpcore
import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from detector.config import EmbeddingSettings
from detector.embedders.http import RateLimiter, _transport_error, retry_after
from detector.embedders.remote import DashScopeEmbedder, OpenAIEmbedder, decode_base64_rows
from detector.errors import (
    BatchRejectedError,
    FatalEmbeddingError,
    RetriableEmbeddingError,
    ThrottledError,
)
from detector.metrics import Metrics

KEY = "sk-unit-secret-4242"
DASH = EmbeddingSettings(backend="dashscope", model="custom-embedding", dimension=4,
                         retry_deadline_s=10, retry_base_s=0.1)
OPENAI = EmbeddingSettings(backend="openai", model="text-embedding-3-small", dimension=4,
                           base_url="http://oa.local/v1", retry_deadline_s=10)
Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def dash_ok(texts: list[str], order: list[int] | None = None) -> dict[str, Any]:
    order = order or list(range(len(texts)))
    return {"output": {"embeddings": [{"text_index": i, "embedding": [float(i + 1), 0, 0, 0]}
                                      for i in order]},
            "usage": {"total_tokens": 7}, "request_id": "r"}


def dashscope(handler: Handler, clock: FakeClock | None = None,
              settings: EmbeddingSettings = DASH, metrics: Metrics | None = None
              ) -> DashScopeEmbedder:
    clock = clock or FakeClock()
    return DashScopeEmbedder(settings, SecretStr(KEY), transport=httpx.MockTransport(handler),
                             sleep=clock.sleep, clock=clock, metrics=metrics)


def sequence(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler, seen


class TestRequestShapes:
    async def test_dashscope_request(self) -> None:
        """native path, bearer key, input.texts and parameters as documented."""
        handler, seen = sequence(httpx.Response(200, json=dash_ok(["a", "b"])))
        settings = DASH.model_copy(update={"text_type": "query", "instruct": "Find spam"})
        async with dashscope(handler, settings=settings) as emb:
            out = await emb.embed(["a", "b"])
        request = seen[0]
        assert request.url.path == "/api/v1/services/embeddings/text-embedding/text-embedding"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert json.loads(request.content) == {
            "model": "custom-embedding", "input": {"texts": ["a", "b"]},
            "parameters": {"dimension": 4, "text_type": "query", "output_type": "dense",
                           "instruct": "Find spam"}}
        assert out.shape == (2, 4)

    async def test_openai_request(self) -> None:
        """/embeddings with input, dimensions and encoding_format (float once a server
        refused base64); float rows ordered by index."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"data": [
                {"index": 1, "embedding": [0, 1, 0, 0]}, {"index": 0, "embedding": [1, 0, 0, 0]}],
                "usage": {"total_tokens": 3}})

        emb = OpenAIEmbedder(OPENAI, SecretStr(KEY), transport=httpx.MockTransport(handler))
        emb.encoding = "float"
        out = await emb.embed(["x", "y"])
        await emb.aclose()
        assert str(seen[0].url) == "http://oa.local/v1/embeddings"
        assert json.loads(seen[0].content) == {"model": "text-embedding-3-small",
                                               "input": ["x", "y"], "dimensions": 4,
                                               "encoding_format": "float"}
        assert out[0].tolist() == [1, 0, 0, 0]
        assert out[1].tolist() == [0, 1, 0, 0]

    async def test_openai_asks_base64_and_decodes_little_endian_float32(self) -> None:
        """the default request asks base64; rows decode by index into float32."""
        seen: list[httpx.Request] = []
        rows = np.array([[3, 4, 0, 0], [0, 0, 1, 0]], dtype="<f4")

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"data": [
                {"index": i, "embedding": base64.b64encode(rows[i].tobytes()).decode()}
                for i in (1, 0)], "usage": {"total_tokens": 3}})

        async with OpenAIEmbedder(OPENAI, SecretStr(KEY),
                                  transport=httpx.MockTransport(handler)) as emb:
            out = await emb.embed(["x", "y"])
        assert json.loads(seen[0].content)["encoding_format"] == "base64"
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, np.array([[0.6, 0.8, 0, 0], [0, 0, 1, 0]]), atol=1e-7)

    async def test_a_400_naming_encoding_format_switches_to_float_once(self) -> None:
        """the refusal is retried at once with float, and float stays; a 400 about
        something else is still a rejected batch."""
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            encoding = json.loads(request.content)["encoding_format"]
            seen.append(encoding)
            if encoding == "base64":
                return httpx.Response(400, json={"error": {
                    "message": "unsupported value", "param": "encoding_format",
                    "type": "invalid_request_error"}})
            if len(seen) == 4:
                return httpx.Response(400, json={"error": {"message": "input too long",
                                                           "type": "invalid_request_error"}})
            return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1, 0, 0, 0]}]})

        clock = FakeClock()
        async with OpenAIEmbedder(OPENAI, SecretStr(KEY), transport=httpx.MockTransport(handler),
                                  sleep=clock.sleep, clock=clock) as emb:
            await emb.embed(["x"])
            await emb.embed(["y"])
            with pytest.raises(BatchRejectedError):
                await emb.embed(["z"])
        assert seen == ["base64", "float", "float", "float"]
        assert clock.sleeps == [0.0]

    def test_base64_rows_of_unequal_length_are_malformed(self) -> None:
        good = base64.b64encode(np.zeros(4, "<f4").tobytes()).decode()
        short = base64.b64encode(np.zeros(3, "<f4").tobytes()).decode()
        with pytest.raises(ValueError, match="unequal"):
            decode_base64_rows([good, short])

    async def test_results_follow_text_index_not_position(self) -> None:
        """a shuffled text_index is put back in input order; rows are unit length."""
        handler, _ = sequence(httpx.Response(200, json=dash_ok(["a", "b", "c"], [2, 0, 1])))
        async with dashscope(handler) as emb:
            out = await emb.embed(["a", "b", "c"])
        assert out[:, 0].tolist() == [1.0, 1.0, 1.0]  # each row normalised
        assert out.dtype.name == "float32"

    async def test_empty_text_and_oversized_batch_never_reach_the_api(self) -> None:
        """validation happens before any request."""
        handler, seen = sequence(httpx.Response(200, json=dash_ok(["a"])))
        async with dashscope(handler) as emb:
            with pytest.raises(ValueError, match="empty"):
                await emb.embed(["ok", "  "])
            with pytest.raises(ValueError, match="batch_size"):
                await emb.embed(["t"] * 11)
        assert seen == []

    async def test_closed_embedder_refuses_work(self) -> None:
        """embed after aclose is an error, and aclose twice is fine."""
        handler, _ = sequence(httpx.Response(200, json=dash_ok(["a"])))
        emb = dashscope(handler)
        await emb.aclose()
        await emb.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await emb.embed(["a"])


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "code", "expected"),
        [
            (429, "Throttling", ThrottledError),
            (400, "Throttling.RateQuota", ThrottledError),
            (400, "Throttling.AllocationQuota", ThrottledError),
            (500, "InternalError.Algo", RetriableEmbeddingError),
            (503, "", RetriableEmbeddingError),
            (401, "InvalidApiKey", FatalEmbeddingError),
            (403, "AccessDenied.Unpurchased", FatalEmbeddingError),
            (400, "Arrearage", FatalEmbeddingError),
            (400, "InvalidParameter", BatchRejectedError),
            (400, "DataInspectionFailed", BatchRejectedError),
            (400, "BadRequest.TooLarge", BatchRejectedError),
        ],
    )
    async def test_classification_by_code_and_status(
        self, status: int, code: str, expected: type[Exception]
    ) -> None:
        """the body's code decides, the status breaks ties."""
        handler, _ = sequence(httpx.Response(status, json={"code": code, "message": "m"}))
        settings = DASH.model_copy(update={"retry_deadline_s": 0.01})
        async with dashscope(handler, settings=settings) as emb:
            with pytest.raises(expected) as info:
                await emb.embed(["a"])
        assert type(info.value) is expected

    async def test_retry_after_is_honoured_then_success(self) -> None:
        """429 with Retry-After: 3 sleeps exactly 3 s, then the retry succeeds."""
        clock = FakeClock()
        handler, seen = sequence(
            httpx.Response(429, json={"code": "Throttling"}, headers={"Retry-After": "3"}),
            httpx.Response(200, json=dash_ok(["a"])))
        metrics = Metrics()
        async with dashscope(handler, clock, metrics=metrics) as emb:
            await emb.embed(["a"])
        assert clock.sleeps == [3.0]
        assert len(seen) == 2
        assert metrics.registry.get_sample_value(
            "detector_embedding_requests_total", {"outcome": "throttled"}) == 1
        assert metrics.registry.get_sample_value("detector_embedding_tokens_total") == 7

    async def test_backoff_is_bounded_by_the_deadline(self) -> None:
        """persistent 500s stop after retry_deadline_s with the last error."""
        clock = FakeClock()
        handler, seen = sequence(httpx.Response(500, json={"code": "InternalError"}))
        async with dashscope(handler, clock) as emb:
            with pytest.raises(RetriableEmbeddingError):
                await emb.embed(["a"])
        assert clock.now <= DASH.retry_deadline_s
        assert len(seen) >= 3
        assert all(s <= DASH.retry_max_s for s in clock.sleeps)

    async def test_malformed_bodies_are_retriable(self) -> None:
        """non-JSON and wrongly shaped 200 bodies are retried."""
        clock = FakeClock()
        handler, seen = sequence(httpx.Response(200, content=b"<html>"),
                                 httpx.Response(200, json={"output": {}}),
                                 httpx.Response(200, json=dash_ok(["a"])))
        async with dashscope(handler, clock) as emb:
            await emb.embed(["a"])
        assert len(seen) == 3

    async def test_wrong_dimension_is_fatal(self) -> None:
        """a dimension other than the configured one can never work: fatal."""
        body = {"output": {"embeddings": [{"text_index": 0, "embedding": [1.0, 2.0]}]}}
        handler, _ = sequence(httpx.Response(200, json=body))
        async with dashscope(handler) as emb:
            with pytest.raises(FatalEmbeddingError, match="2-dimensional"):
                await emb.embed(["a"])

    def test_wire_errors_are_named_by_their_cause(self) -> None:
        """httpx-aiohttp maps every aiohttp connection error to ConnectTimeout: only a
        real timeout (either transport's) reads as one."""
        def mapped(outer: Exception, cause: BaseException) -> str:
            outer.__cause__ = cause
            return str(_transport_error("http://x", outer))

        assert "timed out" in str(_transport_error("http://x", httpx.ReadTimeout("t")))
        assert "timed out" in mapped(httpx.ReadTimeout("t"), httpcore.ReadTimeout("t"))
        assert "timed out" in mapped(httpx.ReadTimeout("t"), aiohttp.SocketTimeoutError("t"))
        reset = mapped(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError())
        assert "failed: ServerDisconnectedError" in reset
        assert "failed: ConnectError" in str(_transport_error("http://x", httpx.ConnectError("x")))

    def test_retry_after_parses_seconds_and_dates(self) -> None:
        """Retry-After in seconds or as an HTTP date."""
        assert retry_after(httpx.Headers({"retry-after": "2.5"})) == 2.5
        assert retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
        assert retry_after(httpx.Headers({})) is None


class TestSecrets:
    async def test_key_never_in_repr_errors_or_logs(self) -> None:
        """even a server echoing the key back does not leak it."""
        handler, _ = sequence(httpx.Response(
            401, json={"code": "InvalidApiKey", "message": f"bad key {KEY}"}))
        with capture_logs() as logs:
            async with dashscope(handler) as emb:
                assert KEY not in repr(emb)
                with pytest.raises(FatalEmbeddingError) as info:
                    await emb.embed(["a"])
        assert KEY not in str(info.value)
        assert "***" in str(info.value)
        assert KEY not in repr(logs)


class TestRateLimiter:
    async def test_requests_per_minute_spaces_calls(self) -> None:
        """60 requests/min: a burst of 3 waits about a second for each after the first."""
        clock = FakeClock()
        limiter = RateLimiter(60, None, clock, clock.sleep)
        for _ in range(3):
            await limiter.acquire(1)
        assert clock.now == pytest.approx(2.0)

    async def test_tokens_per_minute_throttles_big_batches(self) -> None:
        """600 tokens/min = 10 per second: 30 tokens need about 2 more seconds."""
        clock = FakeClock()
        limiter = RateLimiter(None, 600, clock, clock.sleep)
        await limiter.acquire(10)
        await limiter.acquire(10)
        await limiter.acquire(10)
        assert clock.now == pytest.approx(2.0)

    async def test_a_throttled_call_gives_its_tokens_back(self) -> None:
        """a call refused for quota (429 Throttling.RateQuota) was not billed: its retry
        finds the tokens it took still there instead of waiting another second for them."""
        clock = FakeClock()
        handler, seen = sequence(
            httpx.Response(429, json={"code": "Throttling.RateQuota"},
                           headers={"Retry-After": "0"}),
            httpx.Response(200, json=dash_ok(["a"])))
        settings = DASH.model_copy(update={"tokens_per_minute": 600})  # 10 per second
        async with dashscope(handler, clock, settings=settings) as emb:
            await emb.embed(["word " * 40])  # estimated at more than a second's 10 tokens
        assert len(seen) == 2
        assert clock.now < 0.5  # without the refund the retry waits 1 s for the bucket
