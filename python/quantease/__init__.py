"""quantease: layer-wise post-training quantization of LLM weights with a fast C++ core.

NumPy in, NumPy out::

    import quantease
    result = quantease.gptq(W, H, bits=4, group_size=128)   # W: rows x cols, H: cols x cols
    result.weight, result.codes, result.scales, result.loss

PyTorch helpers live in ``quantease.torch`` (needs torch), exporters in ``quantease.export``.
"""

from . import _core
from ._core import NumericalError
from ._easyquant import easyquant
from ._gptq import gptq
from ._hessian import HessianAccumulator
from ._leanquant import leanquant
from ._loss import layer_loss
from ._quantease import quantease
from ._rtn import rtn
from .result import QuantResult, SparseOutliers

__version__ = _core.__version__

__all__ = [
    "HessianAccumulator",
    "NumericalError",
    "QuantResult",
    "SparseOutliers",
    "easyquant",
    "gptq",
    "layer_loss",
    "leanquant",
    "quantease",
    "rtn",
    "__version__",
]
