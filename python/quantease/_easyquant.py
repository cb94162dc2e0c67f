"""EasyQuant (Tang et al., EMNLP 2023): data-free quantization with outlier isolation and Adam on the range."""

from __future__ import annotations

import time

from . import _core
from ._loss import layer_loss
from ._validate import (
    as_hessian,
    as_weight,
    check_bits,
    check_bool,
    check_choice,
    check_group_size,
    check_nonnegative_int,
    check_outlier_sigma,
    check_positive_float,
)
from .result import QuantResult

#: Paper defaults: 100 Adam steps (the paper's BLOOM setting) with the learning rate relative to the start
#: range (see ``easyquant``).
DEFAULT_STEPS = 100
DEFAULT_LR = 1e-2


def easyquant(
    W,
    *,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = True,
    outlier_sigma: float = 3.0,
    outlier_stats: str = "tensor",
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    H=None,
) -> QuantResult:
    """Quantize W without calibration data: isolate outliers, then optimise every channel's range.

    W: rows x cols (float16/32/64, never modified). Defaults are the paper's method:

    * outliers (Eq. 3): ``|W - mean| >= outlier_sigma * std`` with mean and std (float64, population) over
      the whole matrix; ``outlier_stats="row"`` uses each row's own (an extension: rows become independent).
      ``outlier_sigma=None`` or ``inf`` keeps no outlier. They stay in float32 in ``result.outliers`` (CSR);
      ``result.outlier_fraction = nnz / W.size``.
    * ``sym=True``: the paper's symmetric grid ``q = s k``, ``k = clamp(rint(x / s), -(2^(b-1) - 1), 2^(b-1))``
      (-7..8 at 4 bits), stored as ``zeros = 2^(b-1) - 1`` and ``codes = k + zeros``. ``sym=False`` (extension)
      starts from the min-max grid with its integer zero point and optimises the scale at that zero point.
    * range: Adam (betas 0.9/0.999, eps 1e-8) on ``rho = s / s0`` from the start ``s0`` (abs-max of the
      normal values / 2^(b-1)), with the exact a.e. gradient ``dE/ds = 2 sum (Q[x] - x) k`` of
      ``E = sum_normal (Q[x] - x)^2`` (k the clamped code, no straight-through estimator). ``lr`` is in units
      of the start range: Adam on r with absolute rate ``lr * r0`` gives the same steps, so the default
      ``lr=1e-2`` is the paper's BLOOM setting (1e-3, 100 steps) on a channel whose max |w| is 0.1.
    * safety net (beyond the paper): the error on a 32-point geometric grid of ``rho`` in [0.05, ~1.14], the
      two best points polished by Lloyd steps ``s <- sum(x k) / sum(k^2)``; the final scale is the best of
      start, Adam and search by the exact error, so it is never worse than the start range.
    * ``group_size``: -1 (one range per row, the paper) or a positive divisor of cols (extension).

    ``H`` (optional, cols x cols) only reports ``result.loss = layer_loss(W, result.weight, H)``; the
    solver never reads it. ``result.weight == result.grid_weight() + result.outliers.to_dense()`` exactly.
    ``result.info``: ``start_scales`` and ``adam_scales`` (rows x G), ``source`` (0 start, 1 Adam, 2 search:
    where each final scale came from), ``outlier_mean`` and ``outlier_std`` (scalars, or per row),
    ``phase_seconds`` (``outlier_stats``, ``channels``: outliers flagged and ranges optimised, ``outliers_csr``).
    """
    Wf = as_weight(W)
    bits = check_bits(bits)
    group_size = check_group_size(group_size, Wf.shape[1])
    sym = check_bool("sym", sym)
    sigma = check_outlier_sigma(outlier_sigma)
    outlier_stats = check_choice("outlier_stats", outlier_stats, ("tensor", "row"))
    steps = check_nonnegative_int("steps", steps)
    lr = check_positive_float("lr", lr)
    rows, cols = Wf.shape
    if H is not None:  # checked before the solve (the core checks symmetry and values when the loss is taken)
        H = as_hessian(H)
        if H.shape != (cols, cols):
            raise ValueError(f"H must be ({cols}, {cols}) to match W's {cols} columns, got {H.shape}")
    t0 = time.perf_counter()
    out = _core.easyquant(
        Wf,
        bits=bits,
        group_size=group_size,
        sym=sym,
        outlier_sigma=sigma,
        outlier_stats=outlier_stats,
        steps=steps,
        lr=lr,
    )
    seconds = time.perf_counter() - t0
    tensor = outlier_stats == "tensor"
    info = {
        "start_scales": out["start_scales"],
        "adam_scales": out["adam_scales"],
        "source": out["source"],
        "outlier_mean": float(out["outlier_mean"][0]) if tensor else out["outlier_mean"],
        "outlier_std": float(out["outlier_std"][0]) if tensor else out["outlier_std"],
        "outlier_sigma": sigma,
        "outlier_stats": outlier_stats,
        "steps": steps,
        "lr": lr,
    }
    loss = None if H is None else layer_loss(Wf, out["weight"], H)
    return QuantResult.from_core(
        out, method="easyquant", bits=bits, group_size=group_size, sym=sym, seconds=seconds, loss=loss, info=info
    )
