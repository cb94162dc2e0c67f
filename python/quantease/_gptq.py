"""GPTQ (Frantar et al., ICLR 2023) on the shared grid, with a float64 factorization and a damping ladder."""

from __future__ import annotations

import time
import warnings
from typing import Optional

from . import _core, _gguf_solvers
from ._loss import layer_loss
from ._validate import (
    as_hessian,
    as_weight,
    check_bits,
    check_bool,
    check_group_size,
    check_nonnegative_float,
    check_positive_int,
)
from .result import QuantResult


def warn_if_damping_raised(requested: float, used: float, attempts: int, stacklevel: int = 3) -> None:
    """Tell the user when the damping ladder had to go beyond the requested damping."""
    if attempts > 1:
        warnings.warn(
            f"H was not positive definite with damp={requested:g}; factored it with damp={used:g} "
            f"(relative to mean(diag H)) after {attempts} attempts",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def gptq(
    W,
    H,
    *,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    mse: bool = False,
    reference: bool = False,
    fp16_scales: bool = False,
    gguf: Optional[str] = None,
) -> QuantResult:
    """Quantize W column by column, feeding each column's error forward to the columns not yet quantized (OBS).

    W: rows x cols (float16/32/64, never modified); H: cols x cols, symmetric, e.g. (2/n) X X^T.
    ``act_order`` processes columns by decreasing diag(H); ``static_groups`` fixes every group's grid
    from W before the loop; ``damp`` adds damp * mean(diag H) to the diagonal. When H is not positive
    definite the damping grows x10 up to 100 (a RuntimeWarning says which was used, ``result.damp``
    records it); ``quantease.NumericalError`` names the failing minor when nothing works.
    ``fp16_scales`` rounds every scale to float16 before its zero point and codes are computed, so a
    checkpoint with fp16 scales (quantease.export.save_gptq) dequantizes to exactly ``result.weight``.

    ``reference=True`` reproduces the authors' code entry for entry (up to float round-off), quirks
    included: the symmetric grid of a row with no negative value keeps xmin = 0, group statistics are
    read before the block's own updates when group_size < block_size, and no damping retry is made.

    ``gguf="Q4_K"`` (a type of ``quantease.gguf.TYPES``, any case): the column loop runs on llama.cpp's
    blocks of that type (the blocks are the groups): each block's stored parameters come from llama.cpp's
    importance-weighted search with diag(H) as its importance matrix, then refined on the diag(H)-weighted
    error (sub-block integers within +-2, d/dmin refitted by least squares, in fp16), on the block's
    error-compensated values when the loop reaches it (with ``act_order``: on W, before the loop); the codes
    are the nearest points of those exact grids. Finally each block's d/dmin (Q4_1/Q5_1: d/m) moves, with
    the codes fixed, to the minimiser of the exact layer objective, rounded to fp16, when that lowers it.
    ``result.weight`` is llama.cpp's dequantization of ``quantease.gguf.pack(result)``, bit for bit. The grid
    options (bits, group_size, sym, static_groups, mse, reference, fp16_scales) cannot be combined with it.
    """
    Wf = as_weight(W)
    Hf = as_hessian(H)
    if gguf is not None:
        t = _gguf_solvers.check_options(
            gguf,
            Wf.shape[1],
            bits=bits,
            group_size=group_size,
            sym=sym,
            static_groups=static_groups,
            mse=mse,
            reference=reference,
            fp16_scales=fp16_scales,
        )
        damp = check_nonnegative_float("damp", damp)
        block_size = check_positive_int("block_size", block_size)
        act_order = check_bool("act_order", act_order)
        out, seconds = _gguf_solvers.gptq(Wf, Hf, t, act_order=act_order, damp=damp, block_size=block_size)
        warn_if_damping_raised(damp, out["damp"], out["damp_attempts"])
        return _gguf_solvers.result(
            t,
            out,
            method="gptq",
            seconds=seconds,
            loss=layer_loss(W, out["weight"], Hf),
            damp=out["damp"],
        )
    bits = check_bits(bits)
    group_size = check_group_size(group_size, Wf.shape[1])
    damp = check_nonnegative_float("damp", damp)
    block_size = check_positive_int("block_size", block_size)
    flags = {
        name: check_bool(name, value)
        for name, value in (
            ("sym", sym),
            ("act_order", act_order),
            ("static_groups", static_groups),
            ("mse", mse),
            ("reference", reference),
            ("fp16_scales", fp16_scales),
        )
    }
    t0 = time.perf_counter()
    out = _core.gptq(Wf, Hf, bits=bits, group_size=group_size, damp=damp, block_size=block_size, **flags)
    seconds = time.perf_counter() - t0
    warn_if_damping_raised(damp, out["damp"], out["damp_attempts"])
    return QuantResult.from_core(
        out,
        method="gptq",
        bits=bits,
        group_size=group_size,
        sym=flags["sym"],
        seconds=seconds,
        loss=layer_loss(W, out["weight"], Hf),
        damp=out["damp"],
    )
