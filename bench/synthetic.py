"""Synthetic LLM-shaped layer problems for the benchmarks.

Activations of LLM linear layers have a few strongly correlated directions, per-channel scales spread
over orders of magnitude and a handful of outlier channels; their weights are heavy-tailed. We build H
directly (no n x cols activation matrix, so 11008-column layers take seconds, not minutes):

    H = S (B^T diag(decay) B / k + eps I) S,   S = per-channel scales (log-normal, ~0.5 % outliers x20)

which is symmetric positive definite, and W from a Student-t (df 5) scaled like a trained layer.
"""

from __future__ import annotations

import numpy as np


def llm_like_problem(rows: int, cols: int, seed: int = 0, rank: int = 64):
    """(W float32 rows x cols, H float32 cols x cols) of an LLM-like layer."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0.0, 0.5, cols))
    outliers = rng.choice(cols, size=max(1, cols // 200), replace=False)
    scales[outliers] *= 20.0
    B = rng.standard_normal((rank, cols)).astype(np.float32)
    decay = (1.0 / (1.0 + np.arange(rank))).astype(np.float32)
    H = (B.T * decay) @ B / np.float32(rank)
    H[np.diag_indices(cols)] += np.float32(0.05)
    H *= scales.astype(np.float32)[:, None]
    H *= scales.astype(np.float32)[None, :]
    W = (rng.standard_t(5, size=(rows, cols)) * 0.02).astype(np.float32)
    return W, H


def relative_loss(loss: float, W: np.ndarray, H: np.ndarray) -> float:
    """loss / tr(W H W^T): the share of the layer's output energy lost to quantization."""
    Wd = W.astype(np.float64)
    return float(loss / np.einsum("ij,ij->", Wd @ H.astype(np.float64), Wd))
