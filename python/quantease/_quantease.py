"""QuantEase (Behdin et al., arXiv 2309.01885): coordinate descent on the layer objective, optionally with
full-precision sparse outliers, on affine grids or per-row (per-group) codebooks."""

from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np

from . import _core, _gguf_solvers
from ._gptq import warn_if_damping_raised
from ._loss import layer_loss
from ._validate import (
    as_array,
    as_hessian,
    as_weight,
    check_bits,
    check_bool,
    check_choice,
    check_fraction,
    check_group_size,
    check_nonnegative_float,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
)
from .result import QuantResult


def _as_codebook(codebook, rows: int, cols: int, bits: int, group_size: int) -> np.ndarray:
    """The codebook as float32 (rows, 2^bits) / (rows, groups, 2^bits), sorted along the last axis."""
    a = as_array(codebook, "codebook")
    if a.dtype.kind != "f":
        raise ValueError(f"codebook must be a real floating-point array (float16/float32/float64), got {a.dtype}")
    k = 1 << bits
    lead: Tuple[int, ...]
    if group_size > 0:
        groups = cols // group_size
        want, lead = f"({rows}, {groups}, {k}) (rows x groups x 2^bits)", (rows, groups)
    else:
        want, lead = f"({rows}, {k}) (rows x 2^bits)", (rows,)
    if a.ndim != len(lead) + 1 or a.shape[:-1] != lead:
        raise ValueError(
            f"codebook must be {want} for W of shape ({rows}, {cols}) and group_size={group_size}, got {a.shape}"
        )
    if a.shape[-1] != k:
        per = "per row and group" if group_size > 0 else "per row"
        raise ValueError(f"codebook must have 2^bits = {k} levels {per} for bits={bits}, got {a.shape[-1]}")
    with np.errstate(over="ignore"):  # a level beyond float32's range becomes Inf and is reported below
        a = a.astype(np.float32)
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        where = ", ".join(
            f"{n} {i}" for n, i in zip(("row", "group", "level") if a.ndim == 3 else ("row", "level"), bad[0])
        )
        raise ValueError(f"codebook contains NaN or Inf (first at {where})")
    return np.ascontiguousarray(np.sort(a, axis=-1))


def quantease(
    W,
    H,
    *,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = False,
    act_order: bool = True,
    iters: int = 30,
    init: str = "w",
    relaxed: bool = True,
    tol: float = 0.0,
    outliers: float = 0.0,
    outlier_structure: str = "unstructured",
    outlier_step: float = 1.0,
    block_size: int = 128,
    mse: bool = False,
    refit: int = 0,
    codebook: Optional[np.ndarray] = None,
    gguf: Optional[str] = None,
) -> QuantResult:
    """Quantize W by cyclic coordinate descent on ``tr((W - Ŵ) H (W - Ŵ)^T)``, one column at a time.

    W: rows x cols (float16/32/64, never modified); H: cols x cols, symmetric (e.g. (2/n) X X^T; any
    positive multiple gives the same result). Each column's update is the nearest grid point to
    ``β_j = ŵ_j + G_j / H_jj`` with ``G = (W - Ŵ) H`` kept up to date (matrix products only: no inverse, no
    factorization of H).

    * Grid: fitted once from W, per row or per group (``group_size``; with ``act_order`` the groups follow
      the processing order, as in GPTQ), ``sym`` as in GPTQ. ``act_order`` processes columns by decreasing
      diag(H); columns with ``H_jj == 0`` ("dead") are just rounded from their current value.
    * ``mse`` (ours): the grids from W by GPTQ's MSE range search instead of min-max (init="gptq": GPTQ
      runs with ``mse`` too). ``refit`` (ours; 0 = the paper's fixed grids): after the schedule and the polish,
      up to ``refit`` rounds of "refit each row's (group's) scale and zero to its current codes -- the exact
      minimiser of the objective over the scale, the zero within +-2 of its value -- then quantized sweeps
      until one changes nothing"; each step only lowers the objective. ``info["refits"]``: rounds that did.
    * Schedule (official defaults): ``iters`` sweeps starting from ``init`` -- ``"w"`` (Ŵ = W), ``"rtn"``
      (W rounded on the grid), ``"gptq"`` (GPTQ's result on GPTQ's grid) or ``"leanquant"`` (LeanQuant's
      non-uniform result on its codebooks, ``quantease.leanquant(W, H, bits=bits, group_size=group_size,
      act_order=act_order, block_size=block_size)`` with its other defaults); with ``"gptq"``/``"leanquant"``
      the target stays the original W and the best on-grid iterate is kept, so the result is never worse than
      the init's (``info["kept_init"]``: the init's own result was returned). With ``relaxed`` the sweeps with
      ``it % 3 == 1`` (it <= 25, never the last) leave the columns unquantized.
    * ``codebook`` (ours): non-uniform grids instead of affine ones, float (rows, 2^bits), or with
      ``group_size`` (rows, groups, 2^bits) where group g holds the ORIGINAL columns [g * group_size,
      (g + 1) * group_size) whatever ``act_order`` (LeanQuant's static groups, ``g_idx = c // group_size``; a
      LeanQuant ``result.codebook`` can be passed as it is). Levels in any order (they are sorted); the CD step
      takes the nearest level, a β exactly on a float32 midpoint ``(c_t + c_{t+1}) / 2`` the lower one (as
      LeanQuant). ``result.codebook`` holds the sorted levels, ``codes`` index them, ``scales``/``zeros`` are
      None. ``refit`` refits the levels: per row and group, with the codes fixed, the levels in use move to
      the exact minimiser of the objective (a 2^bits x 2^bits solve), then are re-sorted. Codebooks (given,
      or LeanQuant's with ``init="leanquant"``) cannot be combined with ``sym``, ``mse`` or ``outliers``
      (affine-grid options); ``init`` is then ``"w"``, ``"rtn"`` (nearest level of W) or ``"leanquant"``
      without a ``codebook``.
    * Stopping: a quantized sweep that changes nothing (coordinate-wise optimal); ``tol > 0``: a quantized
      sweep after a quantized one lowering the objective by less than ``tol`` times its value. When the
      schedule ends unconverged, quantized "polish" sweeps from the best on-grid iterate run until one
      changes nothing (at most ``iters`` more), so the result is coordinate-wise optimal unless
      ``info["converged"]`` is False. The best on-grid iterate is returned.
    * ``outliers > 0``: the outlier-aware variant. That fraction of the entries (``outlier_structure=
      "structured"``: of the columns) is kept in full precision in ``result.outliers`` (CSR, exactly
      ``round(fraction * entries)`` entries, or that many whole columns); each sweep is followed by one
      iterative-hard-thresholding step with ``η = outlier_step / (2 λ_max(H))``. ``result.weight`` includes
      the outliers; ``result.grid_weight()`` is the quantized part alone.

    * ``gguf="Q3_K"`` (a type of ``quantease.gguf.TYPES``, any case): the sweeps run on llama.cpp's exact
      grids of that type, each sub-block's values a fixed codebook: GPTQ's grids (``gptq(..., gguf=)``)
      with ``init="gptq"`` -- the sweeps start on GPTQ's codes, so the result is never worse than GPTQ's --
      or llama.cpp's imatrix search on W with diag(H) as its importance, refined on the diag(H)-weighted
      error (``init="w"``/``"rtn"``). ``result.gguf`` holds the
      blocks, ``quantease.gguf.pack(result)`` llama.cpp's bytes, which dequantize to ``result.weight`` bit
      for bit. The grid options (bits, group_size, sym, mse, outliers, refit, codebook) cannot be combined
      with it.

    ``result.loss_history``: the objective after every sweep (float32-maintained G, float64 sums);
    ``result.iters``: sweeps run (polish included); ``result.loss``: exact float64 ``layer_loss``.
    ``result.info``: ``quantized``/``polish`` flags, ``changes`` (entries changed), ``moves`` (entry changes
    applied to G: the update's work) and ``sweep_times`` (wall seconds) per sweep, ``rel_history`` (objective /
    tr(W H W^T)), ``converged``, ``stopped_by_tol``, ``best_sweep`` (-1: the initial point), ``kept_init``,
    ``lambda_max``/``eta`` (outliers), ``phase_seconds`` and CPU seconds in the GEMMs and the column loop.
    """
    Wf = as_weight(W)
    Hf = as_hessian(H)
    bits = check_bits(bits)
    group_size = check_group_size(group_size, Wf.shape[1])
    sym = check_bool("sym", sym)
    act_order = check_bool("act_order", act_order)
    iters = check_positive_int("iters", iters)
    init = check_choice("init", init, ("w", "rtn", "gptq", "leanquant"))
    relaxed = check_bool("relaxed", relaxed)
    tol = check_nonnegative_float("tol", tol)
    fraction = check_fraction("outliers", outliers)
    outlier_structure = check_choice("outlier_structure", outlier_structure, ("unstructured", "structured"))
    outlier_step = check_positive_float("outlier_step", outlier_step)
    block_size = check_positive_int("block_size", block_size)
    mse = check_bool("mse", mse)
    refit = check_nonnegative_int("refit", refit)
    if gguf is not None:
        t = _gguf_solvers.check_options(
            gguf,
            Wf.shape[1],
            bits=bits,
            group_size=group_size,
            sym=sym,
            mse=mse,
            outliers=fraction,
            refit=refit,
            codebook=codebook,
        )
        if init == "leanquant":
            raise ValueError(
                f"init='leanquant' cannot be combined with gguf={t.name!r} (LeanQuant's codebooks "
                "are not llama.cpp grids); use 'gptq', 'w' or 'rtn'"
            )
        return _gguf_solvers.quantease(
            Wf,
            Hf,
            t,
            init=init,
            act_order=act_order,
            iters=iters,
            relaxed=relaxed,
            tol=tol,
            block_size=block_size,
            solve=_solve,
        )
    # Which options combine (init, codebook, sym, mse, outliers) is the binding's rule alone.
    if codebook is not None:
        codebook = _as_codebook(codebook, Wf.shape[0], Wf.shape[1], bits, group_size)
    return _solve(
        Wf,
        Hf,
        bits=bits,
        group_size=group_size,
        sym=sym,
        act_order=act_order,
        iters=iters,
        init=init,
        relaxed=relaxed,
        tol=tol,
        outliers=fraction,
        outlier_structure=outlier_structure,
        outlier_step=outlier_step,
        block_size=block_size,
        mse=mse,
        refit=refit,
        codebook=codebook,
    )


def _solve(
    Wf: np.ndarray,
    Hf: np.ndarray,
    *,
    bits: int,
    group_size: int,
    act_order: bool,
    iters: int,
    init: str,
    relaxed: bool,
    tol: float,
    block_size: int,
    codebook: Optional[np.ndarray],
    sym: bool = False,
    outliers: float = 0.0,
    outlier_structure: str = "unstructured",
    outlier_step: float = 1.0,
    mse: bool = False,
    refit: int = 0,
    start_codes: Optional[np.ndarray] = None,
) -> QuantResult:
    """The core's QuantEase on validated arguments (``codebook`` sorted float32; ``start_codes``: uint8 codes
    into it where the sweeps start, never returning worse) and its QuantResult."""
    t0 = time.perf_counter()
    out = _core.quantease(
        Wf,
        Hf,
        bits=bits,
        group_size=group_size,
        sym=sym,
        act_order=act_order,
        iters=iters,
        init=init,
        relaxed=relaxed,
        tol=tol,
        outliers=outliers,
        outlier_structure=outlier_structure,
        outlier_step=outlier_step,
        block_size=block_size,
        mse=mse,
        refit=refit,
        codebook=codebook,
        start_codes=start_codes,
    )
    seconds = time.perf_counter() - t0
    if init in ("gptq", "leanquant"):
        warn_if_damping_raised(0.01 if init == "gptq" else 0.1, out["damp"], out["damp_attempts"])
    history = np.asarray(out["loss_history"], dtype=np.float64)
    base = out["base"]
    info = {
        "quantized": out["quantized"],
        "polish": out["polish"],
        "changes": out["changes"],
        "moves": out["moves"],
        "sweep_times": out["sweep_times"],
        "rel_history": history / base if base > 0 else np.full_like(history, np.nan),
        "converged": out["converged"],
        "stopped_by_tol": out["stopped_by_tol"],
        "best_sweep": out["best_sweep"],
        "kept_init": out["kept_init"],
        "refreshes": out["refreshes"],
        "refits": out["refits"],
        "refit_gains": out["refit_gains"],
        "init": init,
        "phase_seconds": out["phase_seconds"],
        "sweep_seconds": out["sweep_seconds"],
        "gemm_cpu_seconds": out["gemm_cpu_seconds"],
        "column_cpu_seconds": out["column_cpu_seconds"],
    }
    if outliers > 0:
        info.update(
            lambda_max=out["lambda_max"],
            eta=out["eta"],
            outlier_count=out["outlier_count"],
            outlier_structure=outlier_structure,
            iht_seconds=out["iht_seconds"],
        )
    return QuantResult.from_core(
        out,
        method="quantease",
        bits=bits,
        group_size=group_size,
        sym=sym,
        seconds=seconds,
        loss=layer_loss(Wf, out["weight"], Hf),
        damp=out["damp"] if init in ("gptq", "leanquant") else None,
        info=info,
        loss_history=history,
        iters=int(out["sweeps"]),
    )
