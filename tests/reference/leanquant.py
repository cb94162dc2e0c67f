"""Oracle of LeanQuant (Zhang & Shrivastava, ICLR 2025; specs/leanquant.md): slow, readable NumPy.

* ``SplitMix64``: the k-means++ random stream of the library (same integers, same uniforms).
* ``weighted_kmeans``: Lloyd with assignment by argmin |x - c| (first centroid on ties), weighted means,
  empty clusters moved to the points farthest from their centroids (as scikit-learn); stops when the labels
  repeat, when sum (c_new - c)^2 <= tol var(x), or after ``max_iter`` updates. Init: np.linspace(min, max, k)
  for k <= 8, else greedy k-means++.
* ``brute_force_grid_search``: every candidate (min + i d, max - j d), i + j < T, evaluated point by point
  -- the paper's search, O(T^2 n).
* ``leanquant``: GPTQ preparation (as tests/reference/gptq.py, float64), s_j = U_jj^-p in processing
  order (scaled to max 1), one grid per row/group from the original W, then the GPTQ loop unblocked in
  float64 with quant = nearest codebook entry (float32 midpoints) or the float32 affine grid.
"""

from __future__ import annotations

import numpy as np

from .gptq import layer_loss, upper_cholesky_of_inverse
from .grid import dequantize, fit_grid, maxq_of, quantize_codes

__all__ = [
    "SplitMix64",
    "weighted_kmeans",
    "plain_kmeans_step",
    "brute_force_grid_search",
    "weighted_grid_error",
    "leanquant",
]

_MASK = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class SplitMix64:
    """splitmix64 seeded with mix(seed ^ mix(stream + 1)); uniform() = (next >> 11) * 2^-53."""

    def __init__(self, seed: int, stream: int):
        self.state = _mix64((seed ^ _mix64((stream + 1) & _MASK)) & _MASK)

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        return _mix64(self.state)

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0**-53


def _sample(p: np.ndarray, rng: SplitMix64) -> int:
    """First index whose running sum of p exceeds u * sum(p)."""
    cum = np.cumsum(p)
    target = rng.uniform() * cum[-1]
    i = int(np.searchsorted(cum, target, side="right"))
    if i >= len(p):
        i = int(np.nonzero(p > 0)[0][-1])
    return i


def kmeans_plus_plus(x: np.ndarray, s: np.ndarray, k: int, rng: SplitMix64) -> np.ndarray:
    """Greedy weighted k-means++ on x (sorted) with max(8, 2 + floor(ln k)) trials per centre (scikit-learn:
    2 + floor(ln k))."""
    trials = max(8, 2 + int(np.floor(np.log(k))))
    centres = [x[_sample(s, rng)]]
    D = (x - centres[0]) ** 2
    for _ in range(1, k):
        pot = np.cumsum(s * D)[-1]
        if not pot > 0:  # every point sits on a centre: repeat the largest
            centres.append(max(centres))
            continue
        cands = [_sample(s * D, rng) for _ in range(trials)]
        pots = [np.cumsum(s * np.minimum(D, (x - x[c]) ** 2))[-1] for c in cands]
        best = cands[int(np.argmin(pots))]
        centres.append(x[best])
        D = np.minimum(D, (x - x[best]) ** 2)
    return np.sort(np.array(centres))


def weighted_kmeans(values, weights, k: int, max_iter: int = 100, tol: float = 1e-6, seed: int = 0, stream: int = 0):
    """(centroids ascending float64, number of updates) of the weighted 1-D k-means of one row."""
    values = np.asarray(values, dtype=np.float32).astype(np.float64)
    order = np.argsort(values, kind="stable")
    x = values[order]
    s = np.asarray(weights, dtype=np.float64)[order]
    if k <= 8:
        c = np.linspace(x[0], x[-1], k)
    else:
        c = kmeans_plus_plus(x, s, k, SplitMix64(seed, stream))
    var = np.var(x)
    labels_prev = None
    it = 0
    while it < max_iter:
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if labels_prev is not None and np.array_equal(labels, labels_prev):
            break
        weight = np.array([np.sum(s[labels == t]) for t in range(k)])
        sums = np.array([np.sum(s[labels == t] * x[labels == t]) for t in range(k)])
        new = c.copy()
        # empty clusters take the points farthest from their centroids (ties: lower position), which
        # leave their clusters (scikit-learn's relocation)
        empty = np.nonzero(~(weight > 0))[0]
        far = np.lexsort((np.arange(len(x)), -((x - c[labels]) ** 2)))[: len(empty)]
        count = np.bincount(labels, minlength=k)
        for t, i in zip(empty, far):
            weight[labels[i]] -= s[i]
            sums[labels[i]] -= s[i] * x[i]
            count[labels[i]] -= 1
            if count[labels[i]] == 0:  # gave all its points away: keeps its centroid
                weight[labels[i]] = 0.0
            new[t] = x[i]
        for t in range(k):
            if t not in empty and weight[t] > 0:
                new[t] = sums[t] / weight[t]
        it += 1
        shift = np.sum((new - c) ** 2)
        c, labels_prev = np.sort(new), labels
        if shift <= tol * var:
            break
    return c, it


def plain_kmeans_step(values, k: int) -> np.ndarray:
    """One unweighted Lloyd step from k evenly spaced centroids: the mean of the values nearest each; an
    empty cluster takes the value farthest from its centroid (the lowest such), which leaves its cluster."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    c = np.linspace(x[0], x[-1], k)
    labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
    dist = (x - c[labels]) ** 2
    empty = [t for t in range(k) if not np.any(labels == t)]
    moved = sorted(range(len(x)), key=lambda i: (-dist[i], i))[: len(empty)]
    new = c.copy()
    for t, i in zip(empty, moved):
        new[t] = x[i]
    for t in range(k):
        keep = [i for i in np.nonzero(labels == t)[0] if i not in moved]
        if t not in empty and keep:
            new[t] = x[keep].mean()
    return np.sort(new)


def weighted_grid_error(values, weights, scale, zero, bits: int, dtype=np.float64) -> float:
    """sum s (x - q(x))^2 with q the affine grid (scale, zero) in ``dtype`` arithmetic, summed in float64."""
    x = np.asarray(values, dtype=dtype)
    q = dequantize(quantize_codes(x, scale, zero, maxq_of(bits), dtype), scale, zero, dtype)
    return float(np.sum(np.asarray(weights, dtype=np.float64) * (x.astype(np.float64) - q.astype(np.float64)) ** 2))


def brute_force_grid_search(values, weights, bits: int, steps: int) -> dict:
    """The paper's search: every (lo, hi) = (min + i d, max - j d), i + j < steps, d = (max - min) / steps;
    grid xmin = min(lo, 0), xmax = max(hi, 0), scale = (xmax - xmin) / maxq, zero = rint(-xmin / scale).
    Returns dict(scale, zero, error, i, j) of the least weighted error (float64 throughout)."""
    x = np.asarray(values, dtype=np.float32).astype(np.float64)
    s = np.asarray(weights, dtype=np.float64)
    maxq = maxq_of(bits)
    mn, mx = x.min(), x.max()
    delta = (mx - mn) / steps
    i, j = np.nonzero(np.add.outer(np.arange(steps), np.arange(steps)) < steps)
    lo, hi = mn + i * delta, mx - j * delta
    xmin, xmax = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = (xmax - xmin) / maxq
    zero = np.rint(-xmin / scale)
    q = scale[:, None] * (np.clip(np.rint(x[None, :] / scale[:, None]) + zero[:, None], 0, maxq) - zero[:, None])
    err = np.sum(s[None, :] * (x[None, :] - q) ** 2, axis=1)
    b = int(np.argmin(err))
    return dict(scale=scale[b], zero=zero[b], error=err[b], i=int(i[b]), j=int(j[b]), all_errors=err)


def leanquant(
    W,
    H,
    bits: int = 4,
    grid: str = "nonuniform",
    exponent: float = 4.0,
    damp: float = 0.1,
    act_order: bool = True,
    group_size: int = -1,
    seed: int = 0,
    kmeans_iters: int = 100,
    grid_steps: int = 64,
    importance=None,
) -> dict:
    """LeanQuant of one layer. ``importance`` (cols, original order) replaces the oracle's own s (the
    library's s comes from a float32 U; passing it isolates the grid fit and the loop).
    Returns dict(weight, codes, codebook | None, scales | None, zeros | None, importance, loss)."""
    W_in = np.asarray(W, dtype=np.float32).astype(np.float64)
    H_in = np.asarray(H, dtype=np.float64)
    H = H_in.copy()
    rows, cols = W_in.shape
    gs = cols if group_size == -1 else group_size
    groups = cols // gs
    k = 1 << bits
    maxq = maxq_of(bits)
    W = W_in.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    H = H[np.ix_(perm, perm)]
    H[np.diag_indices(cols)] += damp * np.mean(np.diag(H))
    U = upper_cholesky_of_inverse(H)
    d = np.diag(U)
    s = np.empty(cols)
    s[perm] = (d / d.min()) ** (-exponent)
    if importance is not None:
        s = np.asarray(importance, dtype=np.float64)

    # one grid per row and group of original columns, from the original (dead-zeroed) W
    codebook = np.zeros((rows, groups, k), np.float32)
    scales = np.zeros((rows, groups), np.float32)
    zeros = np.zeros((rows, groups), np.float32)
    for r in range(rows):
        for g in range(groups):
            x = W[r, g * gs : (g + 1) * gs].astype(np.float32)
            sg = s[g * gs : (g + 1) * gs]
            if grid == "nonuniform":
                c, _ = weighted_kmeans(x, sg, k, kmeans_iters, 1e-6, seed, r * groups + g)
                codebook[r, g] = c.astype(np.float32)
            else:
                ms, mz = fit_grid(x[None, :], bits, dtype=np.float32)
                best = (weighted_grid_error(x, sg, ms[0], mz[0], bits, np.float32), ms[0], mz[0])
                if x.max() > x.min():
                    bf = brute_force_grid_search(x, sg, bits, grid_steps)
                    cs, cz = np.float32(bf["scale"]), np.float32(bf["zero"])
                    e = weighted_grid_error(x, sg, cs, cz, bits, np.float32)
                    if e < best[0]:
                        best = (e, cs, cz)
                scales[r, g], zeros[r, g] = best[1], best[2]

    group_of = np.arange(cols) // gs
    mids = np.float32(0.5) * (codebook[:, :, :-1] + codebook[:, :, 1:])

    def quant(j, w):
        """(codes, values) of processing-order column j for every row (w: float64 current weights)."""
        g = group_of[perm[j]]
        w32 = w.astype(np.float32)
        if grid == "nonuniform":
            c = np.array([np.searchsorted(mids[r, g], w32[r], side="left") for r in range(rows)])
            return c, codebook[np.arange(rows), g, c].astype(np.float64)
        c = quantize_codes(w32, scales[:, g], zeros[:, g], maxq, np.float32)
        return c, dequantize(c, scales[:, g], zeros[:, g], np.float32).astype(np.float64)

    Wp = W[:, perm].copy()
    codes = np.zeros((rows, cols), np.int64)
    for j in range(cols):
        c, q = quant(j, Wp[:, j])
        err = (Wp[:, j] - q) / U[j, j]
        Wp[:, j:] -= np.outer(err, U[j, j:])
        codes[:, perm[j]] = c
    if grid == "nonuniform":
        weight = codebook[np.arange(rows)[:, None], group_of[None, :], codes].astype(np.float64)
    else:
        weight = dequantize(codes, scales[:, group_of], zeros[:, group_of], np.float32).astype(np.float64)
    return dict(
        weight=weight,
        codes=codes.astype(np.uint8),
        codebook=(codebook[:, 0] if groups == 1 else codebook) if grid == "nonuniform" else None,
        scales=scales if grid == "affine" else None,
        zeros=zeros if grid == "affine" else None,
        importance=s,
        perm=perm if act_order else None,
        loss=layer_loss(W_in, weight, H_in),
    )
