"""Flop counts of the solvers, so every timing can be shown as GFLOP/s against the GEMM rate."""

from __future__ import annotations


def gptq_flops(rows: int, cols: int, block_size: int = 128) -> dict:
    """Factorization (float64): one Cholesky, cols^3/3 -- what quantease's GPTQ does (it needs no triangular
    inverse). The reference chain (cholesky, cholesky_inverse, cholesky) does about 4x that; the peers' rates
    use this same count, i.e. the useful flops. Column loop (float32): the lazy batch updates, ~rows cols^2
    (2 flops per multiply-add over the upper triangle), plus the in-block updates, ~rows cols block_size."""
    factor = cols**3 / 3.0
    loop = float(rows) * cols * cols + float(rows) * cols * block_size
    return {"factor": factor, "column_loop": loop, "total": factor + loop}


def quantease_flops(rows: int, cols: int, sweeps: int = 30, outliers: bool = False) -> dict:
    """Coordinate descent: P = W Σ once (2 rows cols^2), then per sweep one GEMM Ŵ_old Σ̃ plus the
    triangular in-sweep corrections, together ~2 rows cols^2 (shared/specs/quantease.md). The
    outlier-aware variant adds one IHT step per sweep, (Ŵ + S − W) Σ: another 2 rows cols^2."""
    per_sweep = 2.0 * rows * cols * cols * (2 if outliers else 1)
    setup = 2.0 * rows * cols * cols
    return {"setup": setup, "per_sweep": per_sweep, "sweeps": sweeps, "total": setup + sweeps * per_sweep}


def kmeans_flops(rows: int, cols: int, k: int, iters: int = 20) -> float:
    """Weighted 1-D Lloyd: per iteration and weight, k distances (sub, mul, compare: 3 flops each) plus the
    weighted centroid update (~4 flops). ``iters`` is an assumption when the solver does not report it."""
    return float(rows) * cols * (3.0 * k + 4.0) * iters


def leanquant_flops(rows: int, cols: int, bits: int, kmeans_iters: int = 20, block_size: int = 128) -> dict:
    """LeanQuant non-uniform = the GPTQ factorization and column loop + per-row weighted k-means into
    2^bits centroids (nearest-centroid rounding in the loop is O(rows cols bits), not counted)."""
    g = gptq_flops(rows, cols, block_size)
    km = kmeans_flops(rows, cols, 2**bits, kmeans_iters)
    return {**g, "kmeans": km, "total": g["total"] + km}
