"""Independent, slow, readable NumPy oracles of the quantease solvers, written from /work/shared/specs.

They never import quantease: the tests compare the C++ solvers against them.
"""

from .gptq import gptq, layer_loss, upper_cholesky_of_inverse
from .grid import dequantize, fit_grid, fit_row, maxq_of, quantize, quantize_codes
from .rtn import rtn

__all__ = [
    "dequantize",
    "fit_grid",
    "fit_row",
    "maxq_of",
    "quantize",
    "quantize_codes",
    "gptq",
    "layer_loss",
    "upper_cholesky_of_inverse",
    "rtn",
]
