"""Oracle of EasyQuant (specs/easyquant.md): slow, readable NumPy, one channel (row or row-group) at a time.

Shapes: W rows x cols; G = cols // group_size groups (1 when group_size == -1); scales/zeros rows x G.

1. Outliers (Eq. 3): W[i, j] is an outlier when |W[i, j] - mean| >= outlier_sigma * std, with mean and std
   (population, ddof=0, float64) over the whole matrix ("tensor") or over its row ("row"). A std of 0 flags
   nothing. Outliers keep their value; the grid holds 0 there (code == zero).
2. Grid of the normal values of a channel: q = s * k, k = clamp(rint(x / s), kmin, kmax).
   sym:  kmin = -(2^(b-1) - 1), kmax = 2^(b-1) (-7..8 at 4 bits), s0 = r0 / 2^(b-1) with r0 = max |x|;
         stored as zero = 2^(b-1) - 1, code = k + zero.
   asym: the min-max grid of the normal values (reference.grid.fit_row) gives (s0, zero); kmin = -zero,
         kmax = maxq - zero; only s moves.
   No normal value, or max|x| / 2^(b-1) below 1e-30: no optimisation (sym s = 1 / 2^(b-1); asym fit_row's grid).
3. Adam (torch defaults beta = 0.9, 0.999, eps = 1e-8) on rho = s / s0, starting at 1, on the mean squared
   error in units of s0^2: grad = dE/ds / (n s0) with the exact a.e. dE/ds = 2 sum (s k - x) k
   (k the clamped code). rho is kept >= 1e-3. ``steps`` updates; the last rho is Adam's result.
4. Safety net: E on the geometric grid rho_i = rho_hi * (rho_lo / rho_hi)^(i / (points - 1)) (32 points),
   the 2 best grid points (by E, then index) each polished by the Lloyd iteration s <- sum(x k) / sum(k^2)
   while E strictly decreases (at most 64 times); the least polished E wins (first among equals).
   rho_lo = 0.05, rho_hi = 1 + 1 / min(-kmin, kmax) over the sides that are > 0 (covers what the start
   clips).
5. Final scale: among float32(s0) (start), float32(rho_adam * s0) and float32(s_search), the least exact E
   (float32 quantizer, float64 sum); ties keep the earlier in that order. ``source``: 0, 1, 2.
"""

from __future__ import annotations

import numpy as np

from .grid import fit_row, maxq_of

__all__ = [
    "outlier_mask",
    "easyquant",
    "channel_error",
    "ADAM_BETAS",
    "ADAM_EPS",
    "RHO_MIN",
    "RHO_LO",
    "SEARCH_POINTS",
    "POLISHED",
    "LLOYD_MAX",
]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RHO_MIN = 1e-3
RHO_LO = 0.05
SEARCH_POINTS = 32
POLISHED = 2
LLOYD_MAX = 64
MIN_SCALE = 1e-30


def outlier_mask(W: np.ndarray, sigma: float = 3.0, stats: str = "tensor") -> np.ndarray:
    """Boolean mask of Eq. 3: |W - mean| >= sigma * std (float64, ddof=0), per tensor or per row."""
    W64 = np.asarray(W, dtype=np.float32).astype(np.float64)
    if stats == "tensor":
        mean, std = W64.mean(), W64.std()
        if std == 0 or not np.isfinite(sigma):
            return np.zeros(W64.shape, dtype=bool)
        return np.abs(W64 - mean) >= sigma * std
    mean = W64.mean(axis=1, keepdims=True)
    std = W64.std(axis=1, keepdims=True)
    if not np.isfinite(sigma):
        return np.zeros(W64.shape, dtype=bool)
    return (np.abs(W64 - mean) >= sigma * std) & (std > 0)


def channel_error(x: np.ndarray, scale: np.float32, zero: float, maxq: int) -> float:
    """Exact error of the float32 quantizer: sum (scale * (code - zero) - x)^2 in float64."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.float32(scale)
    code = np.clip(np.rint(x / scale) + np.float32(zero), 0, maxq).astype(np.float32)
    q = scale * (code - np.float32(zero))
    return float(np.sum((q.astype(np.float64) - x.astype(np.float64)) ** 2))


def _codes64(x, s, kmin, kmax):
    return np.clip(np.rint(x / s), kmin, kmax)


def _err64(x, s, kmin, kmax) -> float:
    return float(np.sum((s * _codes64(x, s, kmin, kmax) - x) ** 2))


def _adam(x, s0, kmin, kmax, steps, lr) -> float:
    """Adam on rho = s / s0 with the exact a.e. gradient; returns the last rho."""
    n = x.size
    b1, b2 = ADAM_BETAS
    rho, m, v = 1.0, 0.0, 0.0
    for t in range(1, steps + 1):
        s = rho * s0
        k = _codes64(x, s, kmin, kmax)
        grad = 2.0 * float(np.sum((s * k - x) * k)) / (n * s0)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        rho = max(rho - lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS), RHO_MIN)
    return rho


def _search(x, s0, kmin, kmax, points) -> float:
    """The POLISHED (2) best points of the geometric grid of rho (by E, then index), each polished by Lloyd
    steps while E strictly decreases; returns the s with the least polished E (the first among equals)."""
    rho_hi = 1.0 + 1.0 / min(m for m in (-kmin, kmax, np.inf) if m > 0)
    grid = [s0 * (rho_hi * (RHO_LO / rho_hi) ** (i / (points - 1))) for i in range(points)]
    errors = [_err64(x, s, kmin, kmax) for s in grid]
    order = sorted(range(points), key=lambda i: (errors[i], i))[:POLISHED]
    best_s, best_e = s0, np.inf
    for i in order:
        s, e = grid[i], errors[i]
        for _ in range(LLOYD_MAX):
            k = _codes64(x, s, kmin, kmax)
            a = float(np.sum(k * k))
            if a == 0:
                break
            s_new = float(np.sum(x * k)) / a
            if not s_new > 0:
                break
            e_new = _err64(x, s_new, kmin, kmax)
            if not e_new < e:
                break
            s, e = s_new, e_new
        if e < best_e:
            best_s, best_e = s, e
    return best_s


def _channel(x: np.ndarray, bits: int, sym: bool, steps: int, lr: float, points: int):
    """(scale, zero, start_scale, adam_scale, source) of the normal values x of one channel."""
    maxq = maxq_of(bits)
    half = 2 ** (bits - 1)
    x32 = np.asarray(x, dtype=np.float32)
    r0 = np.float32(np.max(np.abs(x32))) if x32.size else np.float32(0)
    degenerate = x32.size == 0 or not r0 / np.float32(half) >= MIN_SCALE
    if sym:
        zero = float(half - 1)
        s0 = np.float32(1.0 / half) if degenerate else np.float32(r0 / np.float32(half))
    else:
        s0, zero = fit_row(x32 if x32.size else np.zeros(1, np.float32), bits, sym=False, dtype=np.float32)
        s0, zero = np.float32(s0), float(zero)
    if degenerate:
        return s0, zero, s0, s0, 0
    kmin, kmax = -zero, maxq - zero
    x64 = x32.astype(np.float64)
    s0_64 = float(s0)
    rho = _adam(x64, s0_64, kmin, kmax, steps, lr) if steps > 0 else 1.0
    s_search = _search(x64, s0_64, kmin, kmax, points)
    candidates = [np.float32(s0), np.float32(rho * s0_64), np.float32(s_search)]
    errors = [channel_error(x32, c, zero, maxq) for c in candidates]
    source = 0
    for i in (1, 2):
        if errors[i] < errors[source]:
            source = i
    return candidates[source], zero, candidates[0], candidates[1], source


def easyquant(
    W: np.ndarray,
    bits: int = 4,
    group_size: int = -1,
    sym: bool = True,
    outlier_sigma: float = 3.0,
    outlier_stats: str = "tensor",
    steps: int = 100,
    lr: float = 1e-2,
    search_points: int = SEARCH_POINTS,
) -> dict:
    """dict(weight, codes, scales, zeros, g_idx, outliers (dense float32, 0 off the mask), mask, start_scales,
    adam_scales, source); weight == scales[:, g_idx] * (codes - zeros[:, g_idx]) + outliers exactly."""
    W = np.asarray(W, dtype=np.float32)
    rows, cols = W.shape
    gs = cols if group_size == -1 else group_size
    n_groups = cols // gs
    maxq = maxq_of(bits)
    mask = outlier_mask(W, outlier_sigma, outlier_stats)
    scales = np.empty((rows, n_groups), np.float32)
    zeros = np.empty((rows, n_groups), np.float32)
    start = np.empty((rows, n_groups), np.float32)
    adam = np.empty((rows, n_groups), np.float32)
    source = np.empty((rows, n_groups), np.uint8)
    codes = np.empty((rows, cols), np.uint8)
    for r in range(rows):
        for g in range(n_groups):
            cs = slice(g * gs, (g + 1) * gs)
            w, m = W[r, cs], mask[r, cs]
            s, z, s_start, s_adam, src = _channel(w[~m], bits, sym, steps, lr, search_points)
            scales[r, g], zeros[r, g], start[r, g], adam[r, g], source[r, g] = s, z, s_start, s_adam, src
            c = np.clip(np.rint(w / s) + np.float32(z), 0, maxq)
            c[m] = z  # the grid holds exactly 0 at the outliers
            codes[r, cs] = c.astype(np.uint8)
    g_idx = (np.arange(cols) // gs).astype(np.int32)
    grid = scales[:, g_idx] * (codes.astype(np.float32) - zeros[:, g_idx])
    outliers = np.where(mask, W, np.float32(0)).astype(np.float32)
    weight = (grid + outliers).astype(np.float32)
    return dict(
        weight=weight,
        codes=codes,
        scales=scales,
        zeros=zeros,
        g_idx=g_idx,
        outliers=outliers,
        mask=mask,
        start_scales=start,
        adam_scales=adam,
        source=source,
    )
