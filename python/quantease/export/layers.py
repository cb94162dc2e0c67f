"""What every export format takes from the caller: layer specs, NumPy-or-torch tensors, and the layout check.

A layer is given as a QuantResult or a (QuantResult, bias-or-None) pair; ``check_layout`` validates the shapes
every format relies on (weight, codes, g_idx, and the affine grid or the codebook) before anything is packed.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from ..packing import PACKABLE_BITS
from ..result import QuantResult

LayerSpec = Union[QuantResult, Tuple[QuantResult, Optional[Any]]]
FP16_MAX = float(np.finfo(np.float16).max)


def split_layer(name: str, spec: LayerSpec) -> Tuple[QuantResult, Optional[np.ndarray]]:
    """Accept either a QuantResult or a (QuantResult, bias-or-None) pair."""
    if isinstance(spec, QuantResult):
        return spec, None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], QuantResult):
        result, bias = spec
        return result, (None if bias is None else to_numpy(bias, f"bias of layer {name!r}"))
    raise ValueError(f"layer {name!r} must be a QuantResult or a (QuantResult, bias) pair, got {type(spec).__name__}")


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def to_numpy(x: Any, what: str) -> np.ndarray:
    if is_torch(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{what} must be a numeric array, got {type(x).__name__}")
    return arr


def check_layout(name: str, r: QuantResult) -> Tuple[int, int, int]:
    """Validate the shapes every format relies on; returns (N, K, G)."""
    w = np.asarray(r.weight)
    if w.ndim != 2:
        raise ValueError(f"layer {name!r}: weight must be 2-D (out_features x in_features), got {w.shape}")
    n, k = w.shape
    codes = np.asarray(r.codes)
    if codes.shape != (n, k):
        raise ValueError(f"layer {name!r}: codes must be {(n, k)} to match the weight, got {codes.shape}")
    if codes.dtype.kind not in "iu":
        raise ValueError(f"layer {name!r}: codes must be integers, got {codes.dtype}")
    if r.bits not in PACKABLE_BITS:
        raise ValueError(f"layer {name!r}: bits must be in 1..8, got {r.bits}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << r.bits)):
        raise ValueError(
            f"layer {name!r}: codes must lie in [0, {(1 << r.bits) - 1}] for {r.bits} bits, "
            f"got [{codes.min()}, {codes.max()}]"
        )
    g_idx = np.asarray(r.g_idx)
    if g_idx.shape != (k,):
        raise ValueError(f"layer {name!r}: g_idx must have {k} entries (one per input column), got shape {g_idx.shape}")
    if r.codebook is not None:
        cb = np.asarray(r.codebook)
        ok = cb.shape == (n, 1 << r.bits) or (cb.ndim == 3 and cb.shape[0] == n and cb.shape[2] == 1 << r.bits)
        if not ok:
            raise ValueError(
                f"layer {name!r}: codebook must be ({n}, {1 << r.bits}) or ({n}, G, {1 << r.bits}), got {cb.shape}"
            )
        groups = 1 if cb.ndim == 2 else cb.shape[1]
    else:
        if r.scales is None or r.zeros is None:
            raise ValueError(f"layer {name!r}: an affine result needs scales and zeros (or a codebook)")
        s, z = np.asarray(r.scales), np.asarray(r.zeros)
        if s.ndim != 2 or s.shape[0] != n or z.shape != s.shape:
            raise ValueError(f"layer {name!r}: scales and zeros must both be ({n}, G), got {s.shape} and {z.shape}")
        groups = s.shape[1]
    if k and (g_idx.min() < 0 or g_idx.max() >= groups):
        raise ValueError(
            f"layer {name!r}: g_idx must lie in [0, {groups - 1}] for {groups} groups, "
            f"got [{g_idx.min()}, {g_idx.max()}]"
        )
    if r.outliers is not None and tuple(r.outliers.shape) != (n, k):
        raise ValueError(f"layer {name!r}: outliers must be {(n, k)}, got {tuple(r.outliers.shape)}")
    return n, k, groups
