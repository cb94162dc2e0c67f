"""A straightforward PyTorch-CPU port of the official QuantEase loop (the peer baseline).

Written from ../../../shared/specs/quantease.md in the style of the official code (column loop in torch):
``Σ̃ = Σ / diag(Σ)`` column-wise with its diagonal zeroed, ``P = W Σ̃`` once, then per sweep one GEMM
``P̂ = Ŵ_old Σ̃`` and, for every column j, the triangular correction ``Σ̃[:j, j]ᵀ Δ[:j]`` from the columns
already changed in this sweep, ``β_j = P_j − P̂_j + correction``, ``Ŵ_j = quant(β_j)`` (or β_j unquantized in
relaxed sweeps: ``iter % 3 == 1 and iter <= 25``, never the last). Defaults as the official code: 30 sweeps,
start from Ŵ = W, grid fitted once from W (per row, or per group from W's group columns), act-order on.
float32 throughout. Deliberately NOT optimised: it is the baseline our C++ solver is measured against.

    Q, seconds, history = quantease(W, H, bits=4, group_size=-1, sym=False, act_order=True, iters=30)

``history`` is the objective ``tr((W − Ŵ) Σ (W − Ŵ)ᵀ)`` after every sweep (float64, computed outside the
timed region; empty when ``track_loss=False``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .torch_gptq import Quantizer, _check, quantize, torch_threads

__all__ = ["quantease", "objective"]


def objective(W: torch.Tensor, W_hat: torch.Tensor, Sigma: torch.Tensor) -> float:
    """``tr((W − Ŵ) Σ (W − Ŵ)ᵀ)`` in float64."""
    D = (W - W_hat).double()
    return float(torch.sum((D @ Sigma.double()) * D))


def quantease(
    W: np.ndarray,
    H: np.ndarray,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = False,
    act_order: bool = True,
    iters: int = 30,
    relaxed: bool = True,
    static_groups: bool = False,
    *,
    max_sweeps: int | None = None,
    track_loss: bool = True,
    threads: int | None = None,
    info: dict | None = None,
) -> tuple[np.ndarray, float, list[float]]:
    """QuantEase coordinate descent on ``W`` (rows x cols) with ``Σ = H`` (cols x cols), official semantics.

    ``max_sweeps`` stops after that many sweeps while keeping the schedule of ``iters`` sweeps (which
    sweeps are relaxed) -- for timing a few sweeps of a long run; the output is then whatever the last sweep
    left (off the grid if it was a relaxed one).
    Returns ``(Q, seconds, history)``: Q float32 numpy (original column order), the wall time of the sweeps
    and their set-up (excluding the loss evaluations), the objective after every sweep.
    When ``info`` is a dict it receives ``sweep_seconds`` (list), ``sweeps``, ``relaxed_sweeps`` (indices),
    ``rel_history`` (objective / tr(W Σ Wᵀ)) and ``perm``.
    """
    _check(W, H)
    with torch_threads(threads):
        W_t = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
        XtX = torch.from_numpy(np.array(H, dtype=np.float32, copy=True))
        rows, columns = W_t.shape
        tick = time.perf_counter()

        quantizer = Quantizer(bits, sym=sym)
        quantizer.find_params(W_t)

        groups = []
        if static_groups and group_size != -1:
            for i in range(0, columns, group_size):
                g = Quantizer(bits, sym=sym)
                g.find_params(W_t[:, i : (i + group_size)])
                groups.append(g)

        perm = invperm = None
        if act_order:
            perm = torch.argsort(torch.diag(XtX), descending=True)
            W_t = W_t[:, perm]
            XtX = XtX[perm][:, perm]
            invperm = torch.argsort(perm)

        W_hat = W_t.clone()
        diag_Sigma = torch.diagonal(XtX, 0).clone()
        # dead columns (Σ_jj = 0) are skipped by the loop; dividing them by 1 keeps NaN out of the buffers
        norm_Sigma = torch.div(XtX, torch.where(diag_Sigma == 0, torch.ones_like(diag_Sigma), diag_Sigma))
        P = torch.matmul(W_t, norm_Sigma)
        norm_Sigma.fill_diagonal_(0)
        norm_Sigma = norm_Sigma.t()
        dead = (diag_Sigma == 0).tolist()
        setup = time.perf_counter() - tick

        history: list[float] = []
        sweep_seconds: list[float] = []
        relaxed_sweeps: list[int] = []
        n_sweeps = iters if max_sweeps is None else min(iters, max_sweeps)

        def fit_group(j: int) -> Quantizer:
            nonlocal quantizer
            if group_size != -1:
                if not static_groups:
                    if j % group_size == 0:
                        quantizer.find_params(W_t[:, j : (j + group_size)])
                else:
                    idx = int(perm[j]) if act_order else j
                    quantizer = groups[idx // group_size]
            return quantizer

        for iter_counter in range(n_sweeps):
            t0 = time.perf_counter()
            quantize_sweep = not relaxed or iter_counter % 3 != 1 or iter_counter == iters - 1 or iter_counter > 25
            if not quantize_sweep:
                relaxed_sweeps.append(iter_counter)
            delta_W_hat = W_hat.clone().t()
            P_hat = torch.matmul(norm_Sigma, delta_W_hat).t()  # Ŵ_old Σ̃, once per sweep
            for j in range(columns):
                if dead[j]:
                    qz = fit_group(j)
                    u = quantize(W_hat[:, j].unsqueeze(1), qz.scale, qz.zero, qz.maxq).flatten()
                    W_hat[:, j] = u
                    delta_W_hat[j, :] -= u
                    continue
                u = P[:, j] - P_hat[:, j]
                if j > 0:
                    # triangular correction from the columns already changed in this sweep
                    u += torch.matmul(norm_Sigma[j, :j], delta_W_hat[:j, :])
                if quantize_sweep:
                    qz = fit_group(j)
                    u = quantize(u.unsqueeze(1), qz.scale, qz.zero, qz.maxq).flatten()
                W_hat[:, j] = u
                delta_W_hat[j, :] -= u
            sweep_seconds.append(time.perf_counter() - t0)
            if track_loss:
                history.append(objective(W_t, W_hat, XtX))

        Q = W_hat[:, invperm] if act_order else W_hat
        seconds = setup + sum(sweep_seconds)
        if info is not None:
            base = objective(W_t, torch.zeros_like(W_t), XtX) if track_loss else float("nan")
            info.update(
                sweep_seconds=sweep_seconds,
                setup_seconds=setup,
                sweeps=n_sweeps,
                relaxed_sweeps=relaxed_sweeps,
                rel_history=[h / base for h in history] if track_loss else [],
                perm=None if perm is None else perm.numpy(),
            )
    return Q.numpy(), seconds, history
