"""A straightforward PyTorch-CPU port of GPTQ "fasterquant" (the peer baseline).

Written from ../../../shared/specs/gptq.md in the style of the authors' reference loop (gptq.py / quant.py of
Frantar et al.): float32 throughout, ``torch.linalg.cholesky`` -> ``torch.cholesky_inverse`` ->
``torch.linalg.cholesky(upper=True)``, blocks of 128 columns with the lazy batch update, the reference's
quirks included (symmetric clipping of non-negative rows, dynamic group statistics read from the global W
which has not yet received the in-block updates). It is deliberately NOT optimised: it is what a user would
otherwise run on a CPU, and the baseline our C++ solver is measured against.

    Q, seconds = gptq(W, H, bits=4, group_size=-1, sym=False, act_order=False, static_groups=False,
                      damp=0.01, block_size=128)

``Quantizer`` and ``quantize`` are shared with the QuantEase and LeanQuant ports.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["Quantizer", "quantize", "gptq", "torch_threads"]


@contextmanager
def torch_threads(threads: int | None):
    """Run the body with ``torch.set_num_threads(threads)`` (all cores when None), restoring it after."""
    old = torch.get_num_threads()
    n = int(threads) if threads else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Affine fake-quantisation ``scale * (clamp(round(x/scale) + zero, 0, maxq) - zero)``.

    ``torch.round`` rounds half to even, as the spec asks.
    """
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class Quantizer:
    """Per-row (per-channel) min-max grid of the reference ``quant.py`` (weights only).

    ``find_params(x)`` fits one grid per row of ``x`` (rows x k); ``scale``/``zero`` have shape (rows, 1).
    ``mse=True`` runs the reference's shrink search (grid 100, maxshrink 0.8, norm 2.4).
    """

    def __init__(
        self,
        bits: int,
        sym: bool = False,
        mse: bool = False,
        norm: float = 2.4,
        grid: int = 100,
        maxshrink: float = 0.8,
    ):
        self.maxq = 2**bits - 1
        self.sym = sym
        self.mse = mse
        self.norm = norm
        self.grid = grid
        self.maxshrink = maxshrink
        self.scale: torch.Tensor | None = None
        self.zero: torch.Tensor | None = None

    def ready(self) -> bool:
        return self.scale is not None and bool(torch.all(self.scale != 0))

    def find_params(self, x: torch.Tensor) -> None:
        x = x.flatten(1)
        tmp = torch.zeros(x.shape[0], dtype=x.dtype)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            neg = xmin < 0
            if torch.any(neg):  # reference quirk: rows without a negative value keep xmin = 0
                xmin[neg] = -xmax[neg]
        dead = (xmin == 0) & (xmax == 0)
        xmin[dead] = -1
        xmax[dead] = +1
        scale = (xmax - xmin) / self.maxq
        if self.sym:
            zero = torch.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = torch.round(-xmin / scale)
        if self.mse:
            best = torch.full([x.shape[0]], float("inf"), dtype=x.dtype)
            for i in range(int(self.maxshrink * self.grid)):
                p = 1 - i / self.grid
                xmin1 = p * xmin
                xmax1 = p * xmax
                scale1 = (xmax1 - xmin1) / self.maxq
                zero1 = torch.round(-xmin1 / scale1) if not self.sym else zero
                q = quantize(x, scale1.unsqueeze(1), zero1.unsqueeze(1), self.maxq)
                q -= x
                q.abs_()
                q.pow_(self.norm)
                err = torch.sum(q, 1)
                better = err < best
                if torch.any(better):
                    best[better] = err[better]
                    scale[better] = scale1[better]
                    zero[better] = zero1[better]
        self.scale = scale.reshape(-1, 1)
        self.zero = zero.reshape(-1, 1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.scale, self.zero, self.maxq)


def _check(W: np.ndarray, H: np.ndarray | None) -> None:
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D, got shape {W.shape}")
    if H is not None and H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be {(W.shape[1], W.shape[1])} to match W's {W.shape[1]} columns, got {H.shape}")


def gptq(
    W: np.ndarray,
    H: np.ndarray,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    *,
    mse: bool = False,
    threads: int | None = None,
    info: dict | None = None,
) -> tuple[np.ndarray, float]:
    """GPTQ fasterquant of ``W`` (rows x cols) against ``H`` (cols x cols), reference semantics, float32.

    Returns ``(Q, seconds)``: the dequantized weight (float32 numpy, rows x cols) and the wall time of the
    solve (grid fit, Cholesky chain and column loop; not the numpy <-> torch conversion).
    When ``info`` is a dict it receives ``codes`` (uint8), ``scales``/``zeros`` (rows x groups), ``g_idx``,
    ``perm`` (None without act-order) and ``damp`` (absolute damping added to the diagonal).
    Inputs are not modified. Raises torch's error when H + damping is not positive definite, as the
    reference does.
    """
    _check(W, H)
    with torch_threads(threads):
        W_t = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
        H_t = torch.from_numpy(np.array(H, dtype=np.float32, copy=True))
        rows, columns = W_t.shape
        tick = time.perf_counter()

        quantizer = Quantizer(bits, sym=sym, mse=mse)
        quantizer.find_params(W_t)

        dead = torch.diag(H_t) == 0
        H_t[dead, dead] = 1
        W_t[:, dead] = 0

        groups = []
        if static_groups and group_size != -1:
            for i in range(0, columns, group_size):
                g = copy.deepcopy(quantizer)
                g.find_params(W_t[:, i : (i + group_size)])
                groups.append(g)

        perm = invperm = None
        if act_order:
            perm = torch.argsort(torch.diag(H_t), descending=True)
            W_t = W_t[:, perm]
            H_t = H_t[perm][:, perm]
            invperm = torch.argsort(perm)

        Q = torch.zeros_like(W_t)
        want_info = info is not None
        if want_info:
            # grid of every column in processing order, for codes / scales / zeros
            col_scale = torch.empty(rows, columns)
            col_zero = torch.empty(rows, columns)

        dampv = damp * torch.mean(torch.diag(H_t))
        diag = torch.arange(columns)
        H_t[diag, diag] += dampv
        H_t = torch.linalg.cholesky(H_t)
        H_t = torch.cholesky_inverse(H_t)
        H_t = torch.linalg.cholesky(H_t, upper=True)
        Hinv = H_t

        for i1 in range(0, columns, block_size):
            i2 = min(i1 + block_size, columns)
            count = i2 - i1
            W1 = W_t[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if group_size != -1:
                    if not static_groups:
                        if (i1 + i) % group_size == 0:
                            # reference quirk: the global W, without this block's in-block updates
                            quantizer.find_params(W_t[:, (i1 + i) : (i1 + i + group_size)])
                    else:
                        idx = i1 + i
                        if act_order:
                            idx = int(perm[idx])
                        quantizer = groups[idx // group_size]
                q = quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
                Q1[:, i] = q
                if want_info:
                    col_scale[:, i1 + i] = quantizer.scale.flatten()
                    col_zero[:, i1 + i] = quantizer.zero.flatten()
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            # the lazy batch update: one matrix product per block
            W_t[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        if act_order:
            Q = Q[:, invperm]
        seconds = time.perf_counter() - tick

        if want_info:
            if act_order:
                col_scale = col_scale[:, invperm]
                col_zero = col_zero[:, invperm]
            gs = group_size if group_size != -1 else columns
            if act_order and not static_groups and group_size != -1:
                g_idx = (invperm // gs).to(torch.int32)
            else:
                g_idx = (torch.arange(columns) // gs).to(torch.int32)
            codes = torch.round(Q / col_scale + col_zero).clamp(0, quantizer.maxq).to(torch.uint8)
            ngroups = int(g_idx.max()) + 1
            first = torch.zeros(ngroups, dtype=torch.long)
            for col in range(columns - 1, -1, -1):
                first[g_idx[col]] = col
            info.update(
                codes=codes.numpy(),
                scales=col_scale[:, first].numpy(),
                zeros=col_zero[:, first].numpy(),
                g_idx=g_idx.numpy(),
                perm=None if perm is None else perm.numpy(),
                damp=float(dampv),
            )
    return Q.numpy(), seconds
