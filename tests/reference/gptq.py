"""Oracle of GPTQ (Frantar et al., ICLR 2023; specs/gptq.md "Algorithm"): slow, readable NumPy, the
factorization and error feedback in float64, the grid in float32 (see ``gptq``'s docstring).

Two modes, as the library has them:

* default ("fixed"): the grid rules without the authors' quirks (sym uses xmin = -xmax on every row), and
  dynamic groups fitted on the CURRENT weights, i.e. after every update from the columns already quantized.
  Written unblocked (one rank-1 update per column): in exact arithmetic that equals the lazy blocked
  algorithm, so the result does not depend on block_size.
* ``reference=True``: the authors' fasterquant line by line, blocked, quirks included -- the sym grid of a
  row with no negative value keeps xmin = 0, and a dynamic group that starts inside a block is fitted on
  the global W, which has not received this block's in-block updates (W1 is never written back).

Shapes: W rows x cols (the library quantizes float32 weights, so W is first cast to float32), H cols x cols.
Results come back in the ORIGINAL column order: codes/weight rows x cols, scales/zeros rows x G
(G = cols // group_size, 1 when group_size == -1), g_idx[cols], perm (processing order) or None.
"""

from __future__ import annotations

import numpy as np

from .grid import dequantize, fit_grid, maxq_of, quantize_codes

__all__ = ["gptq", "layer_loss", "upper_cholesky_of_inverse"]


def layer_loss(W: np.ndarray, W_hat: np.ndarray, H: np.ndarray) -> float:
    """sum over rows of (w - w_hat)^T H (w - w_hat), in float64."""
    D = np.asarray(W, dtype=np.float64) - np.asarray(W_hat, dtype=np.float64)
    return float(np.sum((D @ np.asarray(H, dtype=np.float64)) * D))


def upper_cholesky_of_inverse(H: np.ndarray) -> np.ndarray:
    """U upper triangular with H^-1 = U^T U (the authors: chol -> cholesky_inverse -> chol upper).

    Raises np.linalg.LinAlgError when H is not positive definite.
    """
    L = np.linalg.cholesky(H)
    L_inv = np.linalg.solve(L, np.eye(H.shape[0]))
    H_inv = L_inv.T @ L_inv
    H_inv = (H_inv + H_inv.T) / 2
    return np.linalg.cholesky(H_inv).T


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
    mse: bool = False,
    reference: bool = False,
    grid_dtype=np.float32,
) -> dict:
    """GPTQ of one layer. Returns dict(weight, codes, scales, zeros, g_idx, perm, loss, damp, margin).

    The error feedback and the factorization run in float64. The grid itself -- fitting, rounding a weight
    to its code, the grid value -- runs in ``grid_dtype`` arithmetic on the weights rounded to it: float32
    by default, as the library and the authors (float32 tensors) do. That decides the computed ties the
    grid is full of: the all-zero row's asymmetric zero point rint(1 / (2 / 15)) is 7.4999995 -> 7 in
    float32 but 7.5 -> 8 in float64, and a symmetric row's most negative weight sits at exactly
    -maxq/2 - 0.5 steps. Scales/zeros/weight come back as float64 holding float32 values; codes uint8.
    ``margin`` (rows x cols) is each weight's distance from the nearest rounding boundary when it was
    quantized, in grid steps: a code whose margin is ~1e-6 may legitimately differ in a float32 solver.
    """
    W_in = np.asarray(W, dtype=np.float32).astype(np.float64)
    H_in = np.asarray(H, dtype=np.float64)
    rows, cols = W_in.shape
    maxq = maxq_of(bits)
    gs = cols if group_size == -1 else group_size
    n_groups = cols // gs

    margin = np.zeros((rows, cols))  # processing order

    def snap(j, w, s, z):
        """(code, grid value) of the weights w on the grid (s, z), in grid_dtype arithmetic; records in
        margin[:, j] how far w / s + z lay from the nearest rounding boundary c + 0.5 (in grid steps)."""
        s, z = s.astype(grid_dtype), z.astype(grid_dtype)
        c = quantize_codes(w.astype(grid_dtype), s, z, maxq, grid_dtype)
        y = w.astype(grid_dtype) / s + z
        nearest = np.clip(np.floor(y), 0, maxq - 1) + 0.5
        margin[:, j] = np.abs(y.astype(np.float64) - nearest)
        return c, dequantize(c, s, z, grid_dtype).astype(np.float64)

    def fit(block):
        scale, zero = fit_grid(block.astype(grid_dtype), bits, sym, mse, reference_quirks=reference, dtype=grid_dtype)
        return scale.astype(np.float64), zero.astype(np.float64)

    W = W_in.copy()
    H = H_in.copy()
    # 1. the grid of each row, from the full W before anything else (used when group_size == -1)
    row_scale, row_zero = fit(W)
    # 2. dead columns: no input ever reached them
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    # 3. static groups: every group grid fixed up front on the dead-zeroed, unpermuted W
    static = [fit(W[:, g * gs : (g + 1) * gs]) for g in range(n_groups)] if static_groups else None
    # 4. act-order: columns by descending diag(H), ties in column order
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    W = W[:, perm]
    H = H[np.ix_(perm, perm)]
    # 5. damping relative to the mean of the diagonal
    H[np.diag_indices(cols)] += damp * np.mean(np.diag(H))
    # 6. U: H^-1 = U^T U
    U = upper_cholesky_of_inverse(H)

    codes = np.zeros((rows, cols))  # processing order
    scales = np.tile(row_scale[:, None], (1, n_groups))
    zeros = np.tile(row_zero[:, None], (1, n_groups))
    scale, zero = row_scale, row_zero

    def grid_of_column(j, current):
        """(scale, zero) for the column processed j-th; ``current`` is the W the dynamic fit reads."""
        nonlocal scale, zero
        if group_size != -1:
            if static_groups:
                g = perm[j] // gs
                scale, zero = static[g]
                scales[:, g], zeros[:, g] = scale, zero
            elif j % gs == 0:
                scale, zero = fit(current[:, j : j + gs])
                scales[:, j // gs], zeros[:, j // gs] = scale, zero
        return scale, zero

    if not reference:
        # 7. column by column, every update applied at once (= lazy blocks in exact arithmetic)
        for j in range(cols):
            s, z = grid_of_column(j, W)
            c, q = snap(j, W[:, j], s, z)
            err = (W[:, j] - q) / U[j, j]
            W[:, j:] -= np.outer(err, U[j, j:])
            codes[:, j] = c
    else:
        # 7. the authors' blocks: in-block updates on a copy W1, one product per block into W[:, i2:]
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            W1 = W[:, i1:i2].copy()
            Err1 = np.zeros_like(W1)
            for i in range(i2 - i1):
                j = i1 + i
                s, z = grid_of_column(j, W)  # global W: stale inside the block (quirk)
                c, q = snap(j, W1[:, i], s, z)
                err = (W1[:, i] - q) / U[j, j]
                W1[:, i:] -= np.outer(err, U[j, j:i2])
                Err1[:, i] = err
                codes[:, j] = c
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    # back to the original column order; 8. g_idx of each original column
    inv = np.argsort(perm)
    codes = codes[:, inv]
    margin = margin[:, inv]
    if group_size == -1:
        g_idx = np.zeros(cols, dtype=np.int32)
    elif act_order and not static_groups:
        g_idx = (inv // gs).astype(np.int32)
    else:
        g_idx = (np.arange(cols) // gs).astype(np.int32)
    weight = dequantize(codes, scales[:, g_idx], zeros[:, g_idx], grid_dtype).astype(np.float64)
    return dict(
        weight=weight,
        codes=codes.astype(np.uint8),
        scales=scales,
        zeros=zeros,
        g_idx=g_idx,
        perm=perm if act_order else None,
        loss=layer_loss(W_in, weight, H_in),
        damp=damp,
        margin=margin,
    )
