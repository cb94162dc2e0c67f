"""Synthetic layer problems shared by every test file: small, seeded, deterministic.

A problem is a weight W (rows x cols, float32) and a Hessian H = (2/n) X^T X (cols x cols) of n calibration
samples X (n x cols, rows are samples). H is exactly symmetric and stored as float32 by default, so the
library and the float64 oracles read the very same numbers.

Generators:
    random_problem      iid Gaussian X and W
    llm_like            correlated inputs X = Z A (decaying spectrum), a few outlier input channels with
                        10-100x scale, heavy-tailed W: where GPTQ beats RTN clearly
    dead_columns        llm_like with some input features never active (zero columns of X: diag(H) == 0)
    rank_deficient      n < cols samples: H is singular, PD only after damping
    zero_rows           llm_like with some all-zero rows of W
    PROBLEMS / make     a name -> generator table for parametrised tests
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

__all__ = [
    "Problem",
    "hessian_of",
    "random_problem",
    "llm_like",
    "dead_columns",
    "rank_deficient",
    "zero_rows",
    "PROBLEMS",
    "make",
    "SMALL_SHAPES",
    "code_agreement",
    "rel_diff",
]

# Shapes small enough that the float64 oracles stay fast.
SMALL_SHAPES = [(16, 64), (32, 128), (64, 256)]


@dataclass
class Problem:
    name: str
    W: np.ndarray  # float32 rows x cols
    H: np.ndarray  # symmetric cols x cols (float32 unless asked otherwise)
    X: Optional[np.ndarray] = None  # n x cols calibration inputs the H came from
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def shape(self):
        return self.W.shape

    def __repr__(self) -> str:
        return f"Problem({self.name}, W={self.W.shape}, H={self.H.dtype})"


def hessian_of(X: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(2/n) X^T X in float64, made exactly symmetric, then cast to ``dtype``."""
    X = np.asarray(X, dtype=np.float64)
    H = (2.0 / X.shape[0]) * (X.T @ X)
    H = (H + H.T) / 2
    return np.ascontiguousarray(H.astype(dtype))


def _weights(rng: np.random.Generator, rows: int, cols: int, heavy: bool) -> np.ndarray:
    if heavy:
        # Student-t(5)-like tails, as trained weights have
        W = rng.standard_t(5, size=(rows, cols))
    else:
        W = rng.standard_normal((rows, cols))
    return (W / np.sqrt(cols)).astype(np.float32)


def random_problem(
    rows: int = 32, cols: int = 128, n: Optional[int] = None, seed: int = 0, h_dtype=np.float32
) -> Problem:
    """iid Gaussian inputs (H close to a multiple of I) and weights."""
    rng = np.random.default_rng(seed)
    n = 4 * cols if n is None else n
    X = rng.standard_normal((n, cols))
    return Problem("random", _weights(rng, rows, cols, heavy=False), hessian_of(X, h_dtype), X.astype(np.float32))


def _correlated_inputs(rng: np.random.Generator, n: int, cols: int, n_outliers: int) -> np.ndarray:
    """X = Z A with a decaying spectrum, plus a few outlier channels scaled by 10..100."""
    Z = rng.standard_normal((n, cols))
    Q, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    spectrum = 1.0 / (1.0 + np.arange(cols)) ** 0.8
    A = (Q * spectrum) @ np.linalg.qr(rng.standard_normal((cols, cols)))[0].T
    X = Z @ A.T
    X += 0.3 * np.abs(rng.standard_normal(cols)) * rng.standard_normal((n, cols)) / np.sqrt(cols)
    if n_outliers:
        channels = rng.choice(cols, size=n_outliers, replace=False)
        X[:, channels] *= rng.uniform(10.0, 100.0, size=n_outliers)
    return X


def llm_like(
    rows: int = 32,
    cols: int = 128,
    n: Optional[int] = None,
    seed: int = 0,
    n_outliers: Optional[int] = None,
    h_dtype=np.float32,
) -> Problem:
    """Correlated inputs with outlier channels and heavy-tailed weights."""
    rng = np.random.default_rng(seed)
    n = 4 * cols if n is None else n
    n_outliers = max(1, cols // 32) if n_outliers is None else n_outliers
    X = _correlated_inputs(rng, n, cols, n_outliers)
    return Problem(
        "llm_like",
        _weights(rng, rows, cols, heavy=True),
        hessian_of(X, h_dtype),
        X.astype(np.float32),
        info=dict(n_outliers=n_outliers),
    )


def dead_columns(
    rows: int = 32,
    cols: int = 128,
    n: Optional[int] = None,
    seed: int = 0,
    n_dead: Optional[int] = None,
    h_dtype=np.float32,
) -> Problem:
    """Some input features never fire: X[:, dead] = 0, so H's rows/columns there are exactly 0."""
    rng = np.random.default_rng(seed)
    n = 4 * cols if n is None else n
    n_dead = max(2, cols // 16) if n_dead is None else n_dead
    X = _correlated_inputs(rng, n, cols, max(1, cols // 32))
    dead = np.sort(rng.choice(cols, size=n_dead, replace=False))
    X[:, dead] = 0
    return Problem(
        "dead_columns",
        _weights(rng, rows, cols, heavy=True),
        hessian_of(X, h_dtype),
        X.astype(np.float32),
        info=dict(dead=dead),
    )


def rank_deficient(
    rows: int = 32, cols: int = 128, n: Optional[int] = None, seed: int = 0, h_dtype=np.float32
) -> Problem:
    """Fewer samples than columns: H has rank n < cols (singular, PD only with damping)."""
    rng = np.random.default_rng(seed)
    n = cols // 4 if n is None else n
    X = _correlated_inputs(rng, n, cols, 1)
    return Problem(
        "rank_deficient",
        _weights(rng, rows, cols, heavy=True),
        hessian_of(X, h_dtype),
        X.astype(np.float32),
        info=dict(rank=n),
    )


def zero_rows(
    rows: int = 32,
    cols: int = 128,
    n: Optional[int] = None,
    seed: int = 0,
    n_zero: Optional[int] = None,
    h_dtype=np.float32,
) -> Problem:
    """Some output rows are entirely zero (the all-zero grid guard)."""
    p = llm_like(rows, cols, n, seed, h_dtype=h_dtype)
    rng = np.random.default_rng(seed + 1)
    n_zero = max(1, rows // 8) if n_zero is None else n_zero
    zero = np.sort(rng.choice(rows, size=n_zero, replace=False))
    W = p.W.copy()
    W[zero] = 0
    return Problem("zero_rows", W, p.H, p.X, info=dict(zero=zero))


PROBLEMS: Dict[str, Callable[..., Problem]] = {
    "random": random_problem,
    "llm_like": llm_like,
    "dead_columns": dead_columns,
    "rank_deficient": rank_deficient,
    "zero_rows": zero_rows,
}


def make(name: str, rows: int = 32, cols: int = 128, seed: int = 0, **kw) -> Problem:
    """PROBLEMS[name](rows, cols, seed=seed, **kw)."""
    return PROBLEMS[name](rows, cols, seed=seed, **kw)


# ---------------------------------------------------------------------------------------------------------
# Comparison helpers shared by the tests


def code_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of entries where two code (or weight) arrays are equal."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.mean(a == b))


def rel_diff(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|, tiny)."""
    return abs(a - b) / max(abs(a), abs(b), 1e-300)
