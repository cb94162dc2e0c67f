# Type stub of the compiled extension quantease._core (checked against the module by tests/test_stub.py).
from typing import Any, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt

__version__: str
gemm_backend: str
MIN_BITS: int
MAX_BITS: int

class NumericalError(ArithmeticError): ...

class HessianAccumulator:
    def __init__(self, cols: int, float64: bool = True) -> None: ...
    def add(self, X: npt.NDArray[np.floating]) -> None: ...
    def add_sum(self, S: npt.NDArray[np.floating], n_samples: int) -> None: ...
    def hessian(self, release: bool = False) -> npt.NDArray[np.floating]: ...
    def sum(self, release: bool = False) -> npt.NDArray[np.floating]: ...
    def reset(self) -> None: ...
    @property
    def cols(self) -> int: ...
    @property
    def n_samples(self) -> int: ...
    @property
    def float64(self) -> bool: ...

def rtn(
    W: npt.NDArray[np.float32], *, bits: int, group_size: int, sym: bool, mse: bool, fp16_scales: bool
) -> Dict[str, Any]: ...
def gptq(
    W: npt.NDArray[np.float32],
    H: npt.NDArray[np.floating],
    *,
    bits: int,
    group_size: int,
    sym: bool,
    act_order: bool,
    static_groups: bool,
    damp: float,
    block_size: int,
    mse: bool,
    reference: bool,
    fp16_scales: bool,
) -> Dict[str, Any]: ...
def gguf_rtn(
    W: npt.NDArray[np.float32], *, type: str, imatrix: Optional[npt.NDArray[np.float32]] = None, refine: bool = False
) -> Dict[str, Any]: ...
def gguf_gptq(
    W: npt.NDArray[np.float32], H: npt.NDArray[np.floating], *, type: str, act_order: bool, damp: float, block_size: int
) -> Dict[str, Any]: ...
def quadratic_form_sum(D: npt.NDArray[np.float64], H: npt.NDArray[np.floating]) -> float: ...
def easyquant(
    W: npt.NDArray[np.float32],
    *,
    bits: int,
    group_size: int,
    sym: bool,
    outlier_sigma: float,
    outlier_stats: str,
    steps: int,
    lr: float,
    search_points: int = 32,
    evaluation: str = "auto",
) -> Dict[str, Any]: ...
def quantease(
    W: npt.NDArray[np.float32],
    H: npt.NDArray[np.floating],
    *,
    bits: int,
    group_size: int,
    sym: bool,
    act_order: bool,
    iters: int,
    init: str,
    relaxed: bool,
    tol: float,
    outliers: float,
    outlier_structure: str,
    outlier_step: float,
    block_size: int,
    polish: bool = True,
    refresh_every: int = 0,
    mse: bool = False,
    refit: int = 0,
    codebook: Optional[npt.NDArray[np.float32]] = None,
    start_codes: Optional[npt.NDArray[np.uint8]] = None,
) -> Dict[str, Any]: ...
def leanquant(
    W: npt.NDArray[np.float32],
    H: npt.NDArray[np.floating],
    *,
    bits: int,
    grid: str,
    exponent: float,
    damp: float,
    act_order: bool,
    group_size: int,
    block_size: int,
    seed: int,
    kmeans_iters: int,
    grid_steps: int,
) -> Dict[str, Any]: ...
def weighted_kmeans(
    values: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    *,
    k: int,
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]: ...
def weighted_grid_search(
    values: npt.NDArray[np.float32], weights: npt.NDArray[np.float64], *, bits: int, steps: int
) -> Dict[str, Any]: ...
