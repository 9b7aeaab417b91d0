"""The hosted embedders: DashScope native API and any OpenAI-compatible `/embeddings`.

DashScope (Alibaba Cloud Model Studio, text-embedding-v4 / v3):
``POST {base_url}/api/v1/services/embeddings/text-embedding/text-embedding`` with
``{"model", "input": {"texts"}, "parameters": {"dimension", "text_type", "instruct",
"output_type": "dense"}}``; results carry `text_index`; errors carry a `code` that
decides more than the HTTP status does (``Throttling.RateQuota`` can come with 400).

OpenAI-compatible (OpenAI, DashScope compatible-mode, vLLM, TEI, Ollama):
``POST {base_url}/embeddings`` with ``{"model", "input", "dimensions",
"encoding_format": "float"}``; results carry `index`; errors are
``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from detector.config import Settings
from detector.embedders.base import Embedder
from detector.embedders.http import HttpEmbedder, log, retry_after
from detector.errors import (
    BatchRejectedError,
    ConfigError,
    EmbeddingError,
    FatalEmbeddingError,
    RetriableEmbeddingError,
    ThrottledError,
)
from detector.metrics import Metrics

DASHSCOPE_INTL = "https://dashscope-intl.aliyuncs.com"
OPENAI_DEFAULT = "https://api.openai.com/v1"

_FATAL_PREFIXES = ("InvalidApiKey", "AccessDenied", "Arrearage", "Unauthorized")
_REJECTED_PREFIXES = ("InvalidParameter", "DataInspectionFailed", "BadRequest")


class DashScopeEmbedder(HttpEmbedder):
    """DashScope native text embedding API."""

    path = "/api/v1/services/embeddings/text-embedding/text-embedding"
    default_base_url = DASHSCOPE_INTL

    def body(self, texts: Sequence[str]) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "dimension": self.settings.dimension,
            "text_type": self.settings.text_type,
            "output_type": "dense",
        }
        if self.settings.instruct is not None:
            parameters["instruct"] = self.settings.instruct
        return {"model": self.settings.model, "input": {"texts": list(texts)},
                "parameters": parameters}

    def rows(self, payload: dict[str, Any], count: int) -> tuple[list[list[float]], int]:
        items = payload["output"]["embeddings"]
        by_index = {int(item["text_index"]): item["embedding"] for item in items}
        if sorted(by_index) != list(range(count)):
            msg = f"expected text_index 0..{count - 1}, got {sorted(by_index)}"
            raise ValueError(msg)
        tokens = int(payload.get("usage", {}).get("total_tokens", 0))
        return [by_index[i] for i in range(count)], tokens

    def classify(self, status: int, payload: dict[str, Any] | None,
                 headers: httpx.Headers) -> EmbeddingError:
        code = str(payload.get("code", "")) if payload else ""
        message = self.scrub(str(payload.get("message", ""))) if payload else ""
        text = f"DashScope {status} {code or 'error'}: {message or 'no message'}"
        return _classify(status, code, text, retry_after(headers))


class OpenAIEmbedder(HttpEmbedder):
    """Any server speaking OpenAI's `/v1/embeddings`."""

    path = "/embeddings"
    default_base_url = OPENAI_DEFAULT
    _served_model_checked = False  # warn about a differing served model once

    def body(self, texts: Sequence[str]) -> dict[str, Any]:
        return {"model": self.settings.model, "input": list(texts),
                "dimensions": self.settings.dimension, "encoding_format": "float"}

    def rows(self, payload: dict[str, Any], count: int) -> tuple[list[list[float]], int]:
        if not self._served_model_checked:
            self._check_served_model(payload.get("model"))
        by_index = {int(item["index"]): item["embedding"] for item in payload["data"]}
        if sorted(by_index) != list(range(count)):
            msg = f"expected index 0..{count - 1}, got {sorted(by_index)}"
            raise ValueError(msg)
        tokens = int((payload.get("usage") or {}).get("total_tokens", 0))
        return [by_index[i] for i in range(count)], tokens

    def _check_served_model(self, served: object) -> None:
        """Warn (once) when the server says it used another model than the configured one:
        thresholds and calibration artifacts belong to one model."""
        if not isinstance(served, str):
            return  # some servers omit it; look again on the next response
        self._served_model_checked = True
        if served != self.settings.model:
            log.warning("the embedding server reports another model than embedding.model; "
                        "thresholds and calibration made for one do not fit the other",
                        configured=self.settings.model, served=self.scrub(served),
                        url=self.url)

    def classify(self, status: int, payload: dict[str, Any] | None,
                 headers: httpx.Headers) -> EmbeddingError:
        error = payload.get("error") if payload else None
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or error.get("type") or "")
        message = self.scrub(str(error.get("message", "")))
        text = f"embeddings API {status} {code or 'error'}: {message or 'no message'}"
        if status == 429:
            return ThrottledError(text, code=code, status=status,
                                  retry_after=retry_after(headers))
        return _classify(status, code, text, retry_after(headers))


def _classify(status: int, code: str, text: str, after: float | None) -> EmbeddingError:
    """Map a provider code and HTTP status to what the pipeline should do."""
    if code.startswith("Throttling") or status == 429:
        return ThrottledError(text, code=code, status=status, retry_after=after)
    if code.startswith(_FATAL_PREFIXES) or status in (401, 403):
        return FatalEmbeddingError(text, code=code, status=status)
    if code.startswith("InternalError") or status >= 500 or status == 408:
        return RetriableEmbeddingError(text, code=code, status=status, retry_after=after)
    if code.startswith(_REJECTED_PREFIXES) or 400 <= status < 500:
        return BatchRejectedError(text, code=code, status=status)
    return RetriableEmbeddingError(text, code=code, status=status, retry_after=after)


def build_remote_embedder(settings: Settings, metrics: Metrics | None = None,
                          transport: httpx.AsyncBaseTransport | None = None) -> Embedder:
    """The configured hosted embedder; fails with a clear message when no key is set."""
    key = settings.api_key()
    if key is None:
        var = "DASHSCOPE_API_KEY" if settings.embedding.backend == "dashscope" \
            else "OPENAI_API_KEY"
        msg = (f"embedding.backend {settings.embedding.backend} needs an API key: set "
               f"DETECTOR_EMBEDDING__API_KEY or {var}")
        raise ConfigError(msg)
    cls = DashScopeEmbedder if settings.embedding.backend == "dashscope" else OpenAIEmbedder
    return cls(settings.embedding, key, metrics=metrics, transport=transport)
