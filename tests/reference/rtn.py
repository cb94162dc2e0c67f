"""Oracle of round-to-nearest (RTN): every weight snapped to its row's (or row-group's) grid, no H.

Shapes: W rows x cols; G = cols // group_size groups (1 when group_size == -1); scales/zeros rows x G;
g_idx[col] = col // group_size. ``dtype=np.float32`` mirrors the C++ arithmetic bit for bit.
"""

from __future__ import annotations

import numpy as np

from .grid import dequantize, fit_grid, maxq_of, quantize_codes

__all__ = ["rtn"]


def rtn(
    W: np.ndarray,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = False,
    mse: bool = False,
    dtype=np.float32,
    fp16_scales: bool = False,
) -> dict:
    """Returns dict(weight, codes, scales, zeros, g_idx) with weight == scales[:, g_idx]*(codes - zeros[:, g_idx])."""
    W = np.asarray(W, dtype=np.float32).astype(dtype)
    rows, cols = W.shape
    gs = cols if group_size == -1 else group_size
    n_groups = cols // gs
    maxq = maxq_of(bits)
    scales = np.empty((rows, n_groups), dtype=dtype)
    zeros = np.empty((rows, n_groups), dtype=dtype)
    codes = np.empty((rows, cols), dtype=dtype)
    for g in range(n_groups):
        block = W[:, g * gs : (g + 1) * gs]
        scales[:, g], zeros[:, g] = fit_grid(block, bits, sym, mse, dtype=dtype, fp16_scales=fp16_scales)
        codes[:, g * gs : (g + 1) * gs] = quantize_codes(block, scales[:, g : g + 1], zeros[:, g : g + 1], maxq, dtype)
    g_idx = (np.arange(cols) // gs).astype(np.int32)
    weight = dequantize(codes, scales[:, g_idx], zeros[:, g_idx], dtype)
    return dict(weight=weight, codes=codes.astype(np.uint8), scales=scales, zeros=zeros, g_idx=g_idx)
