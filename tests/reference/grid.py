"""Oracle of the shared uniform grid (specs/gptq.md, "Grid"): slow, readable NumPy, one row at a time.

Every solver fits its grid with these rules, per output row (and per group of input columns):

    xmin = min(row_min, 0), xmax = max(row_max, 0)              the range always contains 0
    asym: scale = (xmax - xmin) / maxq, zero = rint(-xmin / scale)
    sym:  xmax = max(|xmin|, xmax), xmin = -xmax, zero = (maxq + 1) / 2
    all-zero row: xmin, xmax = -1, +1
    code = clamp(rint(w / scale) + zero, 0, maxq), q = scale * (code - zero)

``reference_quirks=True`` reproduces the authors' quant.py ``find_params`` for sym, where a row with no
negative value keeps xmin = 0 (``xmin[xmin < 0] = -xmax[xmin < 0]`` only), so its grid clips at about
0.47 * max for 4 bits. ``dtype`` is the arithmetic precision: float64 for the GPTQ oracle, float32 to
mirror the C++ RTN bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["maxq_of", "fit_row", "fit_grid", "quantize_codes", "dequantize", "quantize"]

MSE_NORM = 2.4
MSE_GRID = 100
MSE_MAXSHRINK = 0.8


def maxq_of(bits: int) -> int:
    return 2 ** int(bits) - 1


def _range(W: np.ndarray, sym: bool, reference_quirks: bool, dtype) -> tuple:
    """Per-row (xmin, xmax): contains 0, sym adjustments, all-zero guard."""
    xmin = np.minimum(W.min(axis=1), dtype(0))
    xmax = np.maximum(W.max(axis=1), dtype(0))
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        if reference_quirks:
            # quant.py: only rows with a negative value get the symmetric lower bound
            xmin = np.where(xmin < 0, -xmax, xmin)
        else:
            xmin = -xmax
    dead = (xmin == 0) & (xmax == 0)
    xmin = np.where(dead, dtype(-1), xmin).astype(dtype)
    xmax = np.where(dead, dtype(1), xmax).astype(dtype)
    return xmin, xmax


def quantize_codes(x: np.ndarray, scale, zero, maxq: int, dtype=np.float64) -> np.ndarray:
    """code = clamp(rint(x / scale) + zero, 0, maxq), in ``dtype`` arithmetic (rint: half to even)."""
    x = np.asarray(x, dtype=dtype)
    scale = np.asarray(scale, dtype=dtype)
    zero = np.asarray(zero, dtype=dtype)
    return np.clip(np.rint(x / scale) + zero, dtype(0), dtype(maxq))


def dequantize(codes: np.ndarray, scale, zero, dtype=np.float64) -> np.ndarray:
    """q = scale * (code - zero)."""
    return np.asarray(scale, dtype=dtype) * (np.asarray(codes, dtype=dtype) - np.asarray(zero, dtype=dtype))


def quantize(x: np.ndarray, scale, zero, maxq: int, dtype=np.float64) -> np.ndarray:
    """Snap x to its grid: scale * (clamp(rint(x/scale) + zero, 0, maxq) - zero)."""
    return dequantize(quantize_codes(x, scale, zero, maxq, dtype), scale, zero, dtype)


def fit_grid(
    W: np.ndarray,
    bits: int,
    sym: bool = False,
    mse: bool = False,
    reference_quirks: bool = False,
    dtype=np.float64,
    fp16_scales: bool = False,
) -> tuple:
    """Per-row grid of a rows x k block: (scale[rows], zero[rows]) in ``dtype`` arithmetic.

    fp16_scales: each scale is rounded to the nearest float16 (kept within [2^-24, 65504]) before the zero
    point is computed from it.
    """
    W = np.atleast_2d(np.asarray(W, dtype=dtype))
    maxq = maxq_of(bits)
    xmin, xmax = _range(W, sym, reference_quirks, dtype)

    def scale_zero(lo, hi):
        scale = ((hi - lo) / dtype(maxq)).astype(dtype)
        if fp16_scales:
            scale = np.clip(np.minimum(scale, 65504.0).astype(np.float16).astype(dtype), 2.0**-24, None)
        if sym:
            zero = np.full_like(scale, dtype((maxq + 1) / 2))
        else:
            zero = np.rint(-lo / scale).astype(dtype)
        return scale, zero

    scale, zero = scale_zero(xmin, xmax)
    if not mse:
        return scale, zero
    # Shrink the range to [p xmin, p xmax] for p = 1, 0.99, ..., 0.21 and keep, per row, the grid with the
    # least sum |q - w|^2.4. Strict "<" keeps the first (widest) range among equals, as quant.py does.
    # The terms are computed in ``dtype``; their sum is always accumulated in float64.
    best = np.full(W.shape[0], np.inf)
    for i in range(int(MSE_MAXSHRINK * MSE_GRID)):
        p = dtype(1 - i / MSE_GRID)
        s1, z1 = scale_zero(p * xmin, p * xmax)
        q = quantize(W, s1[:, None], z1[:, None], maxq, dtype)
        err = np.sum(np.abs(q - W) ** dtype(MSE_NORM), axis=1, dtype=np.float64)
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, s1, scale)
        zero = np.where(better, z1, zero)
    return scale, zero


def fit_row(
    x: np.ndarray, bits: int, sym: bool = False, mse: bool = False, reference_quirks: bool = False, dtype=np.float64
) -> tuple:
    """(scale, zero) of one 1-D row ``x``."""
    scale, zero = fit_grid(np.asarray(x)[None, :], bits, sym, mse, reference_quirks, dtype)
    return scale[0], zero[0]
