"""Input conversion and scalar checks shared by the solver wrappers.

The C++ bindings check array shapes and contents (finite, symmetric) and raise ValueError; this module
does the one explicit conversion to the dtype the core reads (a no-op for float32 C-contiguous W) and
checks the Python scalars, whose wrong types pybind11 would otherwise report as TypeError.
"""

from __future__ import annotations

import numbers

import numpy as np

_FLOAT_KINDS = "f"


def as_weight(W, name: str = "W") -> np.ndarray:
    """W as a float32 C-contiguous 2-D array (no copy when it already is one)."""
    a = np.asarray(W)
    if a.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(f"{name} must be a real floating-point array (float16/float32/float64), got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x cols), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def as_hessian(H, name: str = "H") -> np.ndarray:
    """H as a C-contiguous float32 or float64 array (float16 widens to float32, longdouble to float64)."""
    a = np.asarray(H)
    if a.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(f"{name} must be a real floating-point array (float16/float32/float64), got {a.dtype}")
    dtype = np.float32 if a.dtype.itemsize <= 4 else np.float64
    return np.ascontiguousarray(a, dtype=dtype)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bits(bits) -> int:
    if not _is_int(bits) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
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
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(float(value)) or value < 0:
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
