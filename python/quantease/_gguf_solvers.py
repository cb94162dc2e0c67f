"""The solvers' ``gguf=`` variants: RTN, GPTQ and QuantEase on llama.cpp's block formats (quantease.gguf).

The type fixes the grid (block size, levels, stored precision), so the affine-grid options cannot be
combined with it; each rule is checked here once, for every solver.
"""

from __future__ import annotations

import time

import numpy as np

from . import _core
from .gguf import GGUFType, blocks_from_core, gguf_type
from .result import QuantResult

# Options that choose a grid, with their defaults: none of them may be changed together with gguf=.
_GRID_OPTIONS = {
    "bits": 4,
    "group_size": -1,
    "sym": False,
    "mse": False,
    "fp16_scales": False,
    "static_groups": False,
    "reference": False,
    "outliers": 0.0,
    "codebook": None,
    "refit": 0,
}


def check_options(gguf, cols: int, **given) -> GGUFType:
    """The GGUF type of ``gguf`` for a W with ``cols`` columns; ValueError for a grid option set beside it."""
    t = gguf_type(gguf, cols)
    for name, value in given.items():
        default = _GRID_OPTIONS[name]
        if value is not default and value != default:
            raise ValueError(
                f"{name}={value!r} cannot be combined with gguf={t.name!r}: the GGUF type fixes the "
                f"grid ({t.bits}-bit codes on {t.sub_block}-weight sub-blocks, stored as llama.cpp "
                f"stores them)"
            )
    return t


def as_imatrix(imatrix, cols: int) -> np.ndarray:
    a = np.asarray(imatrix)
    if a.dtype.kind not in "fiu" or a.shape != (cols,):
        raise ValueError(
            f"imatrix must be a 1-D real array of {cols} values (one per column of W), "
            f"got {a.dtype} with shape {a.shape}"
        )
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("imatrix must be finite and >= 0")
    return a


def hessian_importance(H) -> np.ndarray:
    """llama.cpp's importance matrix from H: its diagonal (the mean of x^2 per column, up to a factor), with
    a negative entry (H not positive semi-definite) counted as 0. H is read before the core checks it, so
    NaN/Inf is reported here, as the core would."""
    diag = np.diagonal(H)
    if not np.isfinite(diag).all():
        raise ValueError("H contains NaN or Inf (on its diagonal)")
    return np.ascontiguousarray(np.maximum(diag, 0), dtype=np.float32)


def result(t: GGUFType, out: dict, *, method: str, seconds: float, loss=None, damp=None, info=None) -> QuantResult:
    """The QuantResult of a core GGUF solve: stored codes, GGUFBlocks, llama.cpp's dequantized weight."""
    check_finite(t, out)
    return QuantResult.from_core(
        out,
        method=method,
        bits=t.bits,
        group_size=t.sub_block,
        sym=not t.has_min,
        seconds=seconds,
        loss=loss,
        damp=damp,
        info=info,
        gguf=blocks_from_core(t.name, out),
    )


def check_finite(t: GGUFType, out: dict) -> None:
    """A block scale past float16's range (|W| in the millions) would store inf: refuse it."""
    if not np.all(np.isfinite(out["d"])) or not np.all(np.isfinite(out["weight"])):
        raise ValueError(f"W's values are too large for {t.name}'s float16 block scales (max 65504)")


def rtn(Wf: np.ndarray, t: GGUFType, imatrix) -> QuantResult:
    importance = None if imatrix is None else as_imatrix(imatrix, Wf.shape[1])
    t0 = time.perf_counter()
    out = _core.gguf_rtn(Wf, type=t.name, imatrix=importance)
    return result(t, out, method="rtn", seconds=time.perf_counter() - t0)


def gptq(
    Wf: np.ndarray,
    Hf: np.ndarray,
    t: GGUFType,
    *,
    act_order: bool,
    damp: float,
    block_size: int,
):
    """The core's GGUF GPTQ: (out dict, seconds)."""
    t0 = time.perf_counter()
    out = _core.gguf_gptq(Wf, Hf, type=t.name, act_order=act_order, damp=damp, block_size=block_size)
    seconds = time.perf_counter() - t0
    check_finite(t, out)  # before the caller's layer_loss, which would name W_hat
    return out, seconds


def sorted_codebook(levels: np.ndarray):
    """Every sub-block's levels ascending (the codebook solver's layout) and the code of each sorted level."""
    order = np.argsort(levels, axis=-1, kind="stable")
    return np.take_along_axis(levels, order, axis=-1), order.astype(np.uint8)


def quantease(
    Wf: np.ndarray,
    Hf: np.ndarray,
    t: GGUFType,
    *,
    init: str,
    act_order: bool,
    iters: int,
    relaxed: bool,
    tol: float,
    block_size: int,
    solve,
) -> QuantResult:
    """QuantEase's sweeps on fixed GGUF grids: every sub-block's grid is a codebook of its exact values.

    The grids are GPTQ's (init="gptq", ``gptq(..., gguf=)``), and the sweeps start on GPTQ's codes, so the
    result is never worse than GPTQ's (``info["kept_init"]``: GPTQ's own result was returned); or llama.cpp's
    imatrix search on W with diag(H), refined on the diag(H)-weighted error, the sweeps starting at W ("w") or
    its nearest grid values ("rtn"). ``solve`` is the core's quantease on validated arguments.
    """
    t0 = time.perf_counter()
    if init == "gptq":
        start, _ = gptq(Wf, Hf, t, act_order=act_order, damp=0.01, block_size=block_size)
    else:
        start = _core.gguf_rtn(Wf, type=t.name, imatrix=hessian_importance(Hf), refine=True)
    check_finite(t, start)
    blocks = blocks_from_core(t.name, start)
    book, code_of = sorted_codebook(blocks.levels())
    rows = np.arange(Wf.shape[0])[:, None]
    sub_blocks = start["g_idx"].astype(np.int64)[None, :]
    start_codes = None
    if init == "gptq":  # GPTQ's codes as positions in the sorted codebooks
        position = np.argsort(code_of, axis=-1).astype(np.uint8)
        start_codes = np.ascontiguousarray(position[rows, sub_blocks, start["codes"]])
    r = solve(
        Wf,
        Hf,
        bits=t.bits,
        group_size=t.sub_block,
        act_order=act_order,
        iters=iters,
        init="rtn" if init == "rtn" else "w",
        relaxed=relaxed,
        tol=tol,
        block_size=block_size,
        codebook=book,
        start_codes=start_codes,
    )
    codes = code_of[rows, sub_blocks, r.codes]
    info = dict(r.info, init=init)
    return QuantResult(
        weight=r.weight,
        codes=np.ascontiguousarray(codes),
        scales=None,
        zeros=None,
        g_idx=start["g_idx"],
        perm=r.perm,
        loss=r.loss,
        damp=start["damp"] if init == "gptq" else None,
        bits=t.bits,
        group_size=t.sub_block,
        sym=not t.has_min,
        method="quantease",
        seconds=time.perf_counter() - t0,
        loss_history=r.loss_history,
        iters=r.iters,
        gguf=blocks,
        info=info,
    )
