"""Round-to-nearest: the floor every solver must beat."""

from __future__ import annotations

import time
from typing import Optional

from . import _core, _gguf_solvers
from ._validate import as_weight, check_bits, check_bool, check_group_size
from .result import QuantResult


def rtn(
    W,
    *,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = False,
    mse: bool = False,
    fp16_scales: bool = False,
    gguf: Optional[str] = None,
    imatrix=None,
) -> QuantResult:
    """Round every weight to the nearest point of its row's (or row-and-group's) grid.

    W: rows x cols, float16/32/64, C or Fortran order (never modified). ``group_size`` is -1 (one grid per
    row) or a positive divisor of cols; ``mse`` shrinks each range to minimise sum |q - w|^2.4;
    ``fp16_scales`` rounds every scale to float16 before zero point and codes (bit-exact fp16 export).
    The result has no ``loss`` (RTN sees no H): use ``quantease.layer_loss(W, result.weight, H)``.
    ``result.info["phase_seconds"]``: ``grid_and_codes``, ``dequantize``.

    ``gguf="Q4_K"`` (any llama.cpp type of ``quantease.gguf.TYPES``, any case): llama.cpp's own quantizer
    for that type, block by block along each row -- its reference quantizer (for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0
    the bytes of ``gguf.quants.quantize``), or with ``imatrix`` (cols values, e.g. ``np.diag(H)``) its
    importance-weighted search (``llama-quantize --imatrix``). ``result.gguf`` holds the blocks,
    ``quantease.gguf.pack(result)`` the bytes; the grid options cannot be combined with it.
    """
    Wf = as_weight(W)
    if gguf is not None:
        t = _gguf_solvers.check_options(
            gguf, Wf.shape[1], bits=bits, group_size=group_size, sym=sym, mse=mse, fp16_scales=fp16_scales
        )
        return _gguf_solvers.rtn(Wf, t, imatrix)
    if imatrix is not None:
        raise ValueError("imatrix needs gguf=<type> (it weighs llama.cpp's block search)")
    bits = check_bits(bits)
    group_size = check_group_size(group_size, Wf.shape[1])
    sym = check_bool("sym", sym)
    mse = check_bool("mse", mse)
    fp16_scales = check_bool("fp16_scales", fp16_scales)
    t0 = time.perf_counter()
    out = _core.rtn(Wf, bits=bits, group_size=group_size, sym=sym, mse=mse, fp16_scales=fp16_scales)
    seconds = time.perf_counter() - t0
    return QuantResult.from_core(
        out, method="rtn", bits=bits, group_size=group_size, sym=sym, seconds=seconds, loss=None
    )
