"""Embedders: turn a batch of texts into L2-normalised float32 rows.

`Embedder` is the protocol the pipeline uses (`base`); `build_embedder` (`factory`)
picks the implementation the configuration names (`local` model, or `remote`:
DashScope or OpenAI-compatible over `http`).
"""

from detector.embedders.base import Embedder, normalise_rows
from detector.embedders.factory import build_embedder

__all__ = ["Embedder", "build_embedder", "normalise_rows"]
