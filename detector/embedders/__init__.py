"""Embedders: turn a batch of texts into L2-normalised float32 rows.

Design notes: docs/design/modules.md.
"""

from detector.embedders.base import Embedder, normalise_rows
from detector.embedders.factory import build_embedder

__all__ = ["Embedder", "build_embedder", "normalise_rows"]
