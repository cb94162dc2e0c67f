"""The layer objective every solver minimises."""

from __future__ import annotations

import numpy as np

from . import _core
from ._validate import as_array, as_hessian


def layer_loss(W, W_hat, H) -> float:
    """``sum_rows (w - w_hat)^T H (w - w_hat)``, computed in float64.

    W, W_hat: rows x cols (any real float dtype); H: cols x cols, symmetric. Inputs are not modified.
    """
    W = as_array(W, "W")
    W_hat = as_array(W_hat, "W_hat")
    for name, a in (("W", W), ("W_hat", W_hat)):
        if a.dtype.kind != "f":
            raise ValueError(f"{name} must be a real floating-point array (float16/float32/float64), got {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (rows x cols), got shape {a.shape}")
    if W_hat.shape != W.shape:
        raise ValueError(f"W_hat must have W's shape {W.shape}, got {W_hat.shape}")
    for name, a in (("W", W), ("W_hat", W_hat)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf")
    D = np.ascontiguousarray(np.subtract(W, W_hat, dtype=np.float64))
    return float(_core.quadratic_form_sum(D, as_hessian(H)))
