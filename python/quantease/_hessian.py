"""HessianAccumulator: H = (2/n) sum x x^T over streamed batches of layer inputs, in the C++ core."""

from __future__ import annotations

import warnings

import numpy as np

from . import _core
from ._validate import as_array, check_positive_int


class HessianAccumulator:
    """Streams batches X (n_k x cols, one sample per row) into H = (2/n) sum_k X_k^T X_k.

    ``dtype="float64"`` (default) keeps a float64 running sum of the batch products, each computed in the
    batch's own precision (a float32 batch at the float32 GEMM rate, a float64 batch in float64);
    ``"float32"`` also sums in float32, fine for short streams. ``add`` releases the GIL, so a data
    loader thread can keep running. Batches of any real float dtype and memory order are accepted
    (float32/float64 C-contiguous ones without a copy).
    """

    def __init__(self, cols: int, dtype: str = "float64"):
        cols = check_positive_int("cols", cols)
        if dtype not in ("float64", "float32", np.float64, np.float32):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self._acc = _core.HessianAccumulator(cols, float64=np.dtype(dtype) == np.float64)

    def add(self, X) -> None:
        X = as_array(X, "X")
        if X.dtype.kind != "f":
            raise ValueError(f"X must be a real floating-point array (float16/float32/float64), got {X.dtype}")
        if X.ndim == 1:
            X = X[None, :]
        elif X.ndim != 2:
            X = X.reshape(-1, X.shape[-1])  # (batch, tokens, cols) -> (batch * tokens, cols)
        self._acc.add(np.ascontiguousarray(X, dtype=np.float32 if X.dtype.itemsize <= 4 else np.float64))

    def hessian(self, *, release: bool = False) -> np.ndarray:
        """(2/n) X^T X so far: float64 or float32 as the accumulator, symmetric, zeros before any add.

        release=True hands the accumulator's memory over instead of copying it (a cols x cols matrix) and
        leaves the accumulator empty, as after ``reset()``. Before any add it is all zero, with a
        RuntimeWarning: no solver accepts it (they raise ValueError)."""
        if self.n_samples == 0:
            warnings.warn(
                "HessianAccumulator.hessian(): no samples were added (n_samples == 0), so H is all "
                "zero; add() the layer's inputs first",
                RuntimeWarning,
                stacklevel=2,
            )
        return self._acc.hessian(bool(release))

    def sum(self, *, release: bool = False) -> np.ndarray:
        """The running sum S = X^T X (not scaled by 2/n), symmetric, in the accumulator's dtype; release as in
        ``hessian``. With ``add_sum`` it folds partial sums of shards of the data in a fixed order."""
        return self._acc.sum(bool(release))

    def add_sum(self, S, n_samples: int) -> None:
        """Add another accumulator's ``sum()`` S over ``n_samples`` rows: S must be (cols, cols), symmetric, in
        this accumulator's dtype (only its lower triangle is read). Folding the partial sums of shards
        s = 0, 1, ... in that order gives the same bits whichever process accumulated which shard."""
        n_samples = int(n_samples)
        self._acc.add_sum(S, n_samples)

    def reset(self) -> None:
        self._acc.reset()

    @property
    def cols(self) -> int:
        return self._acc.cols

    @property
    def n_samples(self) -> int:
        return self._acc.n_samples

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self._acc.float64 else np.float32)

    def __repr__(self) -> str:
        return f"HessianAccumulator(cols={self.cols}, dtype={self.dtype.name!r}, n_samples={self.n_samples})"
