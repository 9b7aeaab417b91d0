"""Embedders: turn a batch of texts into L2-normalised float32 rows.

`Embedder` is the protocol the pipeline uses; `build_embedder` picks the
implementation the configuration names (local model, DashScope, OpenAI-compatible).
"""

from detector.embedders.base import Embedder, build_embedder, normalise_rows

__all__ = ["Embedder", "build_embedder", "normalise_rows"]
