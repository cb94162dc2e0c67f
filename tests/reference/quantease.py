"""Oracle of QuantEase (specs/quantease.md): slow, readable NumPy, one column at a time.

Coordinate descent on ``f(Ŵ) = tr((T - Ŵ) Σ (T - Ŵ)^T)``, T = W (plain) or W - S (outlier-aware), Σ = H.
Every column's value comes from the definition (float64), with no maintained G:

    β_j = ( (T Σ)_{:,j} - Σ_{k≠j} Ŵ_{:,k} Σ_{k,j} ) / Σ_{j,j}        (dead column, Σ_jj = 0: β_j = ŵ_j)

and a quantized sweep snaps β_j to its row's (group's) grid in float32 arithmetic, as the library does. The
schedule, stopping rules, best-iterate bookkeeping, polish sweeps and the outlier variant follow the
library's documented semantics (quantease.hpp), written out plainly:

* columns in processing order (act-order: diag(H) descending, dead counted as 1, stable);
* grid per row / group of processing-order columns, fitted once from W (min-max; unstructured outliers:
  clipped at the quantiles n = floor(len * fraction / 2 + 0.5); structured: min-max over the non-outlier
  columns, refitted before every sweep of the main schedule);
* relaxed sweeps at it % 3 == 1, it <= 25, never the last; the best on-grid iterate is returned;
* the best on-grid iterate: the lowest f of a quantized sweep, where a quantized sweep right after the
  best one (no grid refit between) always counts as continuing it (exactly, f cannot go up);
* stop when a quantized sweep changes nothing (and the IHT step leaves S alone), or (tol > 0) when a
  quantized sweep after a quantized one improves f by less than tol * f_prev; unless stopped by tol or
  converged at the best, polish sweeps (quantized, S and grids fixed) from the best iterate until one
  changes nothing, at most ``iters``;
* outliers: S = top-k of |W| (ties by flat index) or the k columns of largest norm; after each sweep
  S <- top_k(S - eta (Ŵ + S - W) Σ), eta = outlier_step / (2 λ_max(Σ)) (``eta`` may be given).

Returns a dict in the ORIGINAL column order: weight (grid part + S), codes, scales, zeros (rows x G, groups in
processing order), S (dense), loss_history, quantized, changes, sweeps, converged, best_sweep.
"""

from __future__ import annotations

import numpy as np

from .grid import dequantize, fit_grid, maxq_of, quantize_codes

__all__ = ["quantease", "objective", "beta"]

F32 = np.float32


def objective(T: np.ndarray, W_hat: np.ndarray, Sigma: np.ndarray) -> float:
    """tr((T - Ŵ) Σ (T - Ŵ)^T) in float64."""
    D = np.asarray(T, np.float64) - np.asarray(W_hat, np.float64)
    return float(np.sum((D @ np.asarray(Sigma, np.float64)) * D))


def beta(T: np.ndarray, W_hat: np.ndarray, Sigma: np.ndarray, j: int) -> np.ndarray:
    """The best unconstrained value of column j with every other column fixed (Σ_jj > 0)."""
    others = W_hat @ Sigma[:, j] - W_hat[:, j] * Sigma[j, j]
    return (T @ Sigma[:, j] - others) / Sigma[j, j]


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _fit(values: np.ndarray, bits: int, sym: bool):
    """(scale, zero) of one row of values, float32 arithmetic; empty: the all-zero guard."""
    v = np.asarray(values, F32).reshape(1, -1)
    if v.shape[1] == 0:
        v = np.zeros((1, 1), F32)
    s, z = fit_grid(v, bits, sym, dtype=F32)
    return F32(s[0]), F32(z[0])


def quantease(
    W,
    H,
    bits=4,
    group_size=-1,
    sym=False,
    act_order=True,
    iters=30,
    init="w",
    relaxed=True,
    tol=0.0,
    outliers=0.0,
    outlier_structure="unstructured",
    outlier_step=1.0,
    eta=None,
    polish=True,
    start=None,
) -> dict:
    """QuantEase of one layer. ``start`` (init="gptq"): dict(codes, scales, zeros) of GPTQ's result in the
    original column order with its processing-order groups (as quantease.gptq returns them)."""
    W32 = np.asarray(W, F32)
    rows, cols = W32.shape
    H64 = np.asarray(H, np.float64)
    maxq = maxq_of(bits)
    gs = cols if group_size == -1 else group_size
    n_groups = cols // gs

    diag = np.diag(H64).copy()
    dead_orig = diag == 0
    diag[dead_orig] = 1
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(cols)
    Wp = W32[:, perm].astype(np.float64)
    Sig = H64[np.ix_(perm, perm)]
    dead = dead_orig[perm]

    # --- outliers: S and its support (processing order)
    outlier_mode = outliers > 0
    structured = outlier_structure == "structured"
    S = np.zeros((rows, cols))
    mask = np.zeros((rows, cols), bool)
    k = 0
    if outlier_mode:
        k = _round_half_up(outliers * (cols if structured else rows * cols))
        if eta is None:
            eta = outlier_step / (2 * np.linalg.eigvalsh(Sig)[-1])

    def select(cand):
        """(S, mask) = cand on its top-k entries (or columns), 0 elsewhere."""
        m = np.zeros((rows, cols), bool)
        if structured:
            norms = np.sum(cand.astype(np.float64) ** 2, axis=0)
            m[:, np.argsort(-norms, kind="stable")[:k]] = True
        else:
            flat = np.argsort(-np.abs(cand).ravel(), kind="stable")[:k]
            m.ravel()[flat] = True
        return np.where(m, cand, 0.0), m

    if outlier_mode:
        S, mask = select(Wp)

    def target():
        return Wp - S

    # --- grids (rows x groups, processing-order groups)
    scales = np.zeros((rows, n_groups), F32)
    zeros = np.zeros((rows, n_groups), F32)

    def fit_all():
        for r in range(rows):
            for g in range(n_groups):
                x = Wp[r, g * gs : (g + 1) * gs].astype(F32)
                if outlier_mode and structured:
                    x = x[~mask[r, g * gs : (g + 1) * gs]]
                elif outlier_mode:
                    n = min(_round_half_up(gs * outliers / 2), (gs - 1) // 2)
                    xs = np.sort(x)
                    x = np.array([xs[n], xs[gs - 1 - n]], F32)
                scales[r, g], zeros[r, g] = _fit(x, bits, sym)

    def grid_of(j):
        g = j // gs
        return scales[:, g], zeros[:, g]

    def snap(j, values):
        s, z = grid_of(j)
        c = quantize_codes(np.asarray(values, F32), s, z, maxq, F32)
        return c, dequantize(c, s, z, F32).astype(np.float64)

    codes = np.zeros((rows, cols))
    on_grid = False
    if init == "gptq":
        scales[:] = start["scales"]
        zeros[:] = start["zeros"]
        codes = np.asarray(start["codes"], np.float64)[:, perm]
        W_hat = np.stack([dequantize(codes[:, j], *grid_of(j), F32) for j in range(cols)], axis=1).astype(np.float64)
        on_grid = True
    else:
        fit_all()
        W_hat = target().copy()
        if init == "rtn":
            for j in range(cols):
                codes[:, j], W_hat[:, j] = snap(j, W_hat[:, j])
            on_grid = True

    f0 = objective(target(), W_hat, Sig)
    best = dict(
        f=f0 if on_grid else np.inf,
        sweep=-1,
        codes=codes.copy(),
        scales=scales.copy(),
        zeros=zeros.copy(),
        S=S.copy(),
        mask=mask.copy(),
    )

    history, quantized, changes, polish_flags = [], [], [], []
    state = dict(prev_q=on_grid, prev_f=f0, sweeps=0, converged=False, by_tol=False)

    def sweep(quantize):
        nonlocal W_hat, codes
        T = target()
        n_changed = 0
        for j in range(cols):
            b = W_hat[:, j].copy() if dead[j] else beta(T, W_hat, Sig, j)
            if quantize:
                codes[:, j], v = snap(j, b)
            else:
                v = b
            n_changed += int(np.sum(v != W_hat[:, j]))
            W_hat[:, j] = v
        return n_changed

    def record(f, q, n, is_polish):
        it = state["sweeps"]
        state["sweeps"] += 1
        history.append(f)
        quantized.append(q)
        changes.append(n)
        polish_flags.append(is_polish)
        # a quantized sweep from the best on-grid point continues it (f can only go down), unless the
        # structured variant refitted the grid in between; polish sweeps always continue the best
        continuation = is_polish or (
            q and state["prev_q"] and best["sweep"] == it - 1 and not (outlier_mode and structured)
        )
        if q and (continuation or f < best["f"]):
            best.update(
                f=f,
                sweep=it,
                codes=codes.copy(),
                scales=scales.copy(),
                zeros=zeros.copy(),
                S=S.copy(),
                mask=mask.copy(),
            )

    for it in range(iters):
        is_relaxed = relaxed and it % 3 == 1 and it <= 25 and it != iters - 1
        q = not is_relaxed
        if outlier_mode and structured:
            fit_all()
        n = sweep(q)
        s_changed = False
        if outlier_mode:
            G = (target() - W_hat) @ Sig
            S_new, mask_new = select(S + eta * G)
            s_changed = bool(np.any(S_new != S))
            S, mask = S_new, mask_new
        f = objective(target(), W_hat, Sig)
        record(f, q, n, False)
        small = tol > 0 and q and state["prev_q"] and (state["prev_f"] - f) < tol * state["prev_f"]
        state["prev_q"], state["prev_f"] = q, f
        if q and n == 0 and not s_changed:
            state["converged"] = True
            break
        if small:
            state["by_tol"] = True
            break

    at_best = best["sweep"] == state["sweeps"] - 1
    if polish and not state["by_tol"] and np.isfinite(best["f"]) and not (state["converged"] and at_best):
        state["converged"] = False
        if not at_best:
            codes = best["codes"].copy()
            scales[:], zeros[:] = best["scales"], best["zeros"]
            S, mask = best["S"].copy(), best["mask"].copy()
            W_hat = np.stack([dequantize(codes[:, j], *grid_of(j), F32) for j in range(cols)], axis=1).astype(
                np.float64
            )
        for _ in range(iters):
            n = sweep(True)
            record(objective(target(), W_hat, Sig), True, n, True)
            if n == 0:
                state["converged"] = True
                break

    inv = np.argsort(perm)
    codes_out = best["codes"][:, inv].astype(np.uint8)
    if group_size == -1:
        g_idx = np.zeros(cols, np.int64)
    elif act_order:
        g_idx = inv // gs
    else:
        g_idx = np.arange(cols) // gs
    sc, ze = best["scales"], best["zeros"]
    grid_w = dequantize(codes_out, sc[:, g_idx], ze[:, g_idx], F32).astype(F32)
    S_out = best["S"][:, inv].astype(F32)
    return dict(
        weight=grid_w + S_out,
        grid_weight=grid_w,
        codes=codes_out,
        scales=sc,
        zeros=ze,
        S=S_out,
        mask=best["mask"][:, inv],
        loss_history=np.array(history),
        quantized=quantized,
        changes=changes,
        polish=polish_flags,
        sweeps=state["sweeps"],
        converged=state["converged"],
        best_sweep=best["sweep"],
        best_f=best["f"],
        eta=eta,
        k=k,
        perm=perm,
    )
