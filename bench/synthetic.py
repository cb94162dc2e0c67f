"""Synthetic LLM-shaped layer problems for the benchmarks (the generator lives in quantease.problems).

Activations of LLM linear layers have a few strongly correlated directions, per-channel scales spread
over orders of magnitude and a handful of outlier channels; their weights are heavy-tailed. We build H
directly (no n x cols activation matrix, so 11008-column layers take seconds, not minutes):

    H = S (B^T diag(decay) B / k + eps I) S,   S = per-channel scales (log-normal, ~0.5 % outliers x20)

which is symmetric positive definite, and W from a Student-t (df 5) scaled like a trained layer.
"""

from __future__ import annotations

import numpy as np

from quantease.problems import llm_like


def llm_like_problem(rows: int, cols: int, seed: int = 0, rank: int = 64):
    """(W float32 rows x cols, H float32 cols x cols) of an LLM-like layer (quantease.problems.llm_like)."""
    p = llm_like(rows, cols, seed=seed, rank=rank)
    return p.W, p.H


def relative_loss(loss: float, W: np.ndarray, H: np.ndarray) -> float:
    """loss / tr(W H W^T): the share of the layer's output energy lost to quantization."""
    Wd = W.astype(np.float64)
    return float(loss / np.einsum("ij,ij->", Wd @ H.astype(np.float64), Wd))
