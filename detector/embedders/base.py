"""The `Embedder` protocol and the row normalisation every implementation applies
(the factory is `detector.embedders.factory.build_embedder`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from detector.errors import RetriableEmbeddingError

Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Embeds texts. Implementations are async context managers owning their resources.

    `embed` returns a float32 array of shape (len(texts), dimension) whose rows are
    L2-normalised, in the order of `texts`. It raises `detector.errors.EmbeddingError`
    subclasses; their `retriable` attribute tells the caller what to do.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Matrix: ...

    async def aclose(self) -> None: ...


def normalise_rows(rows: npt.ArrayLike, dimension: int) -> Matrix:
    """Check the shape and L2-normalise each row; a zero or non-finite row is an error."""
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        msg = f"embedding has shape {matrix.shape}, expected (n, {dimension})"
        raise RetriableEmbeddingError(msg)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.isfinite(norms).all() or not norms.all():  # methods: no np.all dispatch
        msg = "embedding contains a zero or non-finite row"
        raise RetriableEmbeddingError(msg)
    normalised: Matrix = (matrix / norms).astype(np.float32, copy=False)
    return normalised
