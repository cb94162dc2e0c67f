"""Input conversion and the rules of every scalar option, in one place for all solver wrappers.

The C++ bindings check array shapes and contents (finite, symmetric), the ranges again for direct callers of
the private _core, and the rules that combine options (e.g. a codebook with sym=True); this module does the
one explicit conversion to the dtype the core reads (a no-op for float32 C-contiguous W) and checks each
Python scalar's type and range, whose wrong types pybind11 would otherwise report as TypeError.
"""

from __future__ import annotations

import numbers
from typing import Optional

import numpy as np

from . import _core

_FLOAT_KINDS = "f"


def as_array(value, name: str) -> np.ndarray:
    """``value`` as a NumPy array. A torch tensor (any device, requiring grad or not) is read through
    ``detach().cpu()``; bfloat16 -- which NumPy has no type for -- becomes float32, exactly (as does an
    ml_dtypes bfloat16 array)."""
    if type(value).__module__.split(".")[0] == "torch":  # a torch.Tensor, without importing torch
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        try:
            return tensor.numpy()
        except TypeError as err:  # another dtype NumPy lacks (float8, ...)
            raise ValueError(
                f"{name} must be a real floating-point array (float16/float32/float64), got a "
                f"torch tensor of {tensor.dtype}; convert it with {name}.float()"
            ) from err
    a = np.asarray(value)
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return a


def as_weight(W, name: str = "W") -> np.ndarray:
    """W as a float32 C-contiguous 2-D array (no copy when it already is one)."""
    a = as_array(W, name)
    if a.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(f"{name} must be a real floating-point array (float16/float32/float64), got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x cols), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def as_hessian(H, name: str = "H") -> np.ndarray:
    """H as a C-contiguous float32 or float64 array (float16 widens to float32, longdouble to float64)."""
    a = as_array(H, name)
    if a.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(f"{name} must be a real floating-point array (float16/float32/float64), got {a.dtype}")
    dtype = np.float32 if a.dtype.itemsize <= 4 else np.float64
    return np.ascontiguousarray(a, dtype=dtype)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bits(bits, name: str = "bits") -> int:
    """bits in _core.MIN_BITS.._core.MAX_BITS (2..8), the range the C++ core defines for every solver."""
    if not _is_int(bits) or not _core.MIN_BITS <= bits <= _core.MAX_BITS:
        raise ValueError(f"{name} must be an integer in {_core.MIN_BITS}..{_core.MAX_BITS}, got {bits!r}")
    return int(bits)


def check_group_size(group_size, cols: int) -> int:
    if not _is_int(group_size) or not (group_size == -1 or (group_size > 0 and cols % group_size == 0)):
        raise ValueError(f"group_size must be -1 or a positive divisor of cols={cols}, got {group_size!r}")
    return int(group_size)


def check_positive_int(name: str, value) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_nonnegative_float(name: str, value) -> float:
    if not _is_real(value) or not np.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_nonnegative_int(name: str, value, below: Optional[int] = None) -> int:
    """An integer >= 0 (and < ``below`` when given: a seed must fit 64 bits)."""
    if not _is_int(value) or value < 0 or (below is not None and value >= below):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_positive_float(name: str, value) -> float:
    if not _is_real(value) or not np.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_fraction(name: str, value) -> float:
    if not _is_real(value) or not np.isfinite(float(value)) or not 0 <= float(value) < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def check_outlier_sigma(value) -> float:
    """EasyQuant's threshold in standard deviations; None or inf: no outliers."""
    if value is None:
        return float("inf")
    if not _is_real(value) or not float(value) > 0:
        raise ValueError(f"outlier_sigma must be a number > 0 (inf: no outliers), got {value!r}")
    return float(value)
