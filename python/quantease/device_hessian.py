"""The layer Hessian accumulated where the activations are (a CUDA device): only the finished sum crosses.

``DeviceHessianAccumulator`` is ``HessianAccumulator``'s twin for torch tensors: each batch X (n x cols) adds
X^T X, one float32 GEMM on the tensor's device, to a float64 (or float32) running sum kept on that device.
The activations never leave the device; ``sum()`` hands the running sum over (a device tensor, for a
reduction across ranks), ``hessian()`` brings it to the host once and finishes H = (2/n) S through the C++
accumulator, the one place a sum becomes a Hessian. The same code runs on CPU tensors, which is how its logic
is tested on machines without a GPU.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ._hessian import HessianAccumulator

__all__ = ["DeviceHessianAccumulator", "finish_hessian"]


def finish_hessian(S: np.ndarray, n_samples: int) -> np.ndarray:
    """H = (2/n) S for a symmetric partial sum S (float64 or float32, C-contiguous) over n rows."""
    acc = HessianAccumulator(S.shape[0], dtype=S.dtype.name)
    acc.add_sum(S, n_samples)
    return acc.hessian(release=True)


class DeviceHessianAccumulator:
    """Streams batches of a layer's inputs (torch tensors, any leading shape, last dim = cols) into
    S = sum X^T X on their device. dtype: the running sum's precision ("float64" or "float32"); each batch's
    product is a float32 GEMM (float16/bfloat16 inputs are widened first)."""

    def __init__(self, cols: int, dtype: str = "float64"):
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.cols = int(cols)
        self.dtype = np.dtype(dtype)
        self.n_samples = 0
        self._sum: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, self.cols).to(torch.float32)
        if self._sum is None:
            self._sum = torch.zeros(self.cols, self.cols, dtype=getattr(torch, self.dtype.name), device=rows.device)
        self._sum += (rows.T @ rows).to(self._sum.dtype)
        self.n_samples += rows.shape[0]

    def sum(self, *, release: bool = False) -> torch.Tensor:
        """S = sum X^T X so far, on the device (zeros on the CPU before any add); release=True hands the
        tensor over and empties the accumulator."""
        S = self._sum
        if S is None:
            S = torch.zeros(self.cols, self.cols, dtype=getattr(torch, self.dtype.name))
        if release:
            self._sum = None
            self.n_samples = 0
        return S

    def hessian(self, *, release: bool = False) -> np.ndarray:
        """(2/n) S on the host, in the accumulator's dtype."""
        n = self.n_samples
        S = self.sum(release=release).to("cpu").numpy()
        return finish_hessian(np.ascontiguousarray(S), n)

    def reset(self) -> None:
        self._sum = None
        self.n_samples = 0
