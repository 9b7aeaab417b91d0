"""The hosted embedders: DashScope native API and any OpenAI-compatible `/embeddings`.

Design notes: docs/design/modules.md.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import numpy as np
import structlog

from detector.config import Settings
from detector.embedders.base import Embedder
from detector.embedders.http import HttpEmbedder, Rows, retry_after
from detector.errors import (
    BatchRejectedError,
    ConfigError,
    EmbeddingError,
    FatalEmbeddingError,
    RetriableEmbeddingError,
    ThrottledError,
)
from detector.metrics import Metrics

log = structlog.get_logger("detector.embedders")

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

    def rows(self, payload: dict[str, Any], count: int) -> tuple[Rows, int]:
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
    # base64 until the server refuses it; then float for the life of this embedder.
    encoding: Literal["base64", "float"] = "base64"

    def body(self, texts: Sequence[str]) -> dict[str, Any]:
        return {"model": self.settings.model, "input": list(texts),
                "dimensions": self.settings.dimension, "encoding_format": self.encoding}

    def rows(self, payload: dict[str, Any], count: int) -> tuple[Rows, int]:
        if not self._served_model_checked:
            self._check_served_model(payload.get("model"))
        by_index = {int(item["index"]): item["embedding"] for item in payload["data"]}
        if sorted(by_index) != list(range(count)):
            msg = f"expected index 0..{count - 1}, got {sorted(by_index)}"
            raise ValueError(msg)
        tokens = int((payload.get("usage") or {}).get("total_tokens", 0))
        ordered = [by_index[i] for i in range(count)]
        if isinstance(ordered[0], str):  # base64 (a server may answer float regardless)
            return decode_base64_rows(ordered), tokens
        return ordered, tokens

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
        if status == 400 and self.encoding == "base64" and _names_encoding(error):
            self.encoding = "float"
            log.warning("the embeddings API refuses encoding_format base64; using float",
                        url=self.url, error=text)
            return RetriableEmbeddingError(text, code=code, status=status, retry_after=0.0)
        if status == 429:
            return ThrottledError(text, code=code, status=status,
                                  retry_after=retry_after(headers))
        return _classify(status, code, text, retry_after(headers))


def decode_base64_rows(rows: Sequence[str]) -> Rows:
    """Rows of base64 little-endian float32, as one (len(rows), d) float32 array."""
    decoded = [base64.b64decode(r) for r in rows]
    sizes = {len(d) for d in decoded}
    if len(sizes) != 1 or next(iter(sizes)) % 4:
        msg = f"base64 embeddings of unequal or partial lengths: {sorted(sizes)} bytes"
        raise ValueError(msg)
    matrix: Rows = np.frombuffer(b"".join(decoded), dtype="<f4").reshape(
        len(rows), -1).astype(np.float32, copy=False)
    return matrix


def _names_encoding(error: dict[str, Any]) -> bool:
    """Whether a 400 is about encoding_format (OpenAI puts the field in `param`)."""
    said = " ".join(str(error.get(k) or "") for k in ("param", "message", "code")).lower()
    return "encoding_format" in said or "base64" in said


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
