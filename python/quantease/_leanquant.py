"""LeanQuant (Zhang & Shrivastava, ICLR 2025): GPTQ against loss-error-aware grids."""

from __future__ import annotations

import time

import numpy as np

from . import _core
from ._gptq import warn_if_damping_raised
from ._loss import layer_loss
from ._validate import (
    as_hessian,
    as_weight,
    check_bits,
    check_bool,
    check_choice,
    check_group_size,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_int,
)
from .result import QuantResult

GRIDS = ("nonuniform", "affine")


def leanquant(
    W,
    H,
    *,
    bits: int = 4,
    grid: str = "nonuniform",
    exponent: float = 4.0,
    damp: float = 0.1,
    act_order: bool = True,
    group_size: int = -1,
    block_size: int = 128,
    seed: int = 0,
    kmeans_iters: int = 100,
    grid_steps: int = 2048,
    sym: bool = False,
) -> QuantResult:
    """Quantize W with GPTQ's column loop against per-row grids fitted to the loss-error-weighted error.

    W: rows x cols (float16/32/64, never modified); H: cols x cols, symmetric. Preparation as GPTQ (dead
    columns, ``act_order``, ``damp`` relative to mean(diag H) with the damping ladder, U = upper Cholesky
    factor of H^-1). Column j's importance is ``s_j = U_jj^(-exponent)`` (reported scaled to max 1 in
    ``info["importance"]``, original column order); every row's grid minimises ``sum_j s_j (w_j - q(w_j))^2``
    on the original weights, then the GPTQ loop runs against it:

    * ``grid="nonuniform"`` (the paper's main method): a ``2^bits``-entry codebook per row by weighted 1-D
      k-means -- evenly spaced start between the row's min and max when ``2^bits <= 8``, else k-means++
      drawn from ``seed`` (row r, group g uses stream r * G + g), at most ``kmeans_iters`` Lloyd steps,
      tolerance 1e-6 * var(row). ``result.codebook`` is (rows, 2^bits) or (rows, G, 2^bits), ascending,
      ``codes`` index it, ``scales``/``zeros`` are None; quant(w) is the nearest entry.
    * ``grid="affine"`` (paper v2): the asymmetric (scale, zero) grid with the least weighted error among
      the ranges (min + i d, max - j d), d = (max - min) / grid_steps, i + j < grid_steps (searched
      exactly, not sampled), never worse than the min-max grid; standard scales/zeros (GPTQ export works).

    ``group_size > 0``: one grid per row and group of ``group_size`` original columns (static groups;
    ``g_idx = c // group_size``). ``info``: ``importance``, ``grid_error`` (weighted error of each grid on the
    original weights), ``minmax_error`` (affine), ``kmeans_iters`` (non-uniform), ``phase_seconds``.
    ``sym`` exists for quantease.pipeline, which passes it to every solver: both grids are asymmetric, so
    only False is accepted.
    """
    Wf = as_weight(W)
    Hf = as_hessian(H)
    bits = check_bits(bits)
    grid = check_choice("grid", grid, GRIDS)
    exponent = check_nonnegative_float("exponent", exponent)
    damp = check_nonnegative_float("damp", damp)
    act_order = check_bool("act_order", act_order)
    group_size = check_group_size(group_size, Wf.shape[1])
    block_size = check_positive_int("block_size", block_size)
    seed = check_nonnegative_int("seed", seed, below=2**64)
    kmeans_iters = check_positive_int("kmeans_iters", kmeans_iters)
    grid_steps = check_positive_int("grid_steps", grid_steps)
    if check_bool("sym", sym):
        raise ValueError("sym must be False for leanquant (a codebook or an asymmetric affine grid), got True")
    t0 = time.perf_counter()
    out = _core.leanquant(
        Wf,
        Hf,
        bits=bits,
        grid=grid,
        exponent=exponent,
        damp=damp,
        act_order=act_order,
        group_size=group_size,
        block_size=block_size,
        seed=seed,
        kmeans_iters=kmeans_iters,
        grid_steps=grid_steps,
    )
    seconds = time.perf_counter() - t0
    warn_if_damping_raised(damp, out["damp"], out["damp_attempts"])
    rows = Wf.shape[0]
    groups = 1 if group_size == -1 else Wf.shape[1] // group_size
    shape = (rows,) if groups == 1 else (rows, groups)
    info = {
        "grid": grid,
        "exponent": exponent,
        "seed": seed,
        "importance": out["importance"],
        "grid_error": out["grid_error"].reshape(shape),
        "damp_attempts": out["damp_attempts"],
        "phase_seconds": out["phase_seconds"],
    }
    if out["codebook"] is not None:
        info["kmeans_iters"] = out["kmeans_iters"].reshape(shape)
    else:
        info["minmax_error"] = out["minmax_error"].reshape(shape)
    return QuantResult.from_core(
        out,
        method="leanquant",
        bits=bits,
        group_size=group_size,
        sym=False,
        seconds=seconds,
        loss=layer_loss(W, out["weight"], Hf),
        damp=out["damp"],
        info=info,
    )


def _values_weights(values, weights):
    X = np.ascontiguousarray(np.atleast_2d(np.asarray(values, dtype=np.float32)))
    s = np.ascontiguousarray(np.asarray(weights, dtype=np.float64))
    return X, s


def weighted_kmeans(values, weights, k: int, *, max_iter: int = 100, tol: float = 1e-6, seed: int = 0):
    """The solver's 1-D weighted k-means alone, on every row of ``values`` (rows x n) with weights (n,).

    Returns (centroids rows x k float64 ascending, iterations per row). Row r draws k-means++ (k > 8) from
    stream r of ``seed``, as LeanQuant's row r without groups.
    """
    X, s = _values_weights(values, weights)
    seed = check_nonnegative_int("seed", seed, below=2**64)
    return _core.weighted_kmeans(X, s, k=k, max_iter=max_iter, tol=tol, seed=seed)


def weighted_grid_search(values, weights, bits: int, steps: int = 2048) -> dict:
    """The solver's exact weighted affine range search alone: dict(scale, zero, error) per row of values."""
    X, s = _values_weights(values, weights)
    return _core.weighted_grid_search(X, s, bits=bits, steps=steps)
