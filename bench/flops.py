"""Flop counts of the solvers, so every timing can be shown as GFLOP/s against the GEMM rate."""
from __future__ import annotations


def gptq_flops(rows: int, cols: int, block_size: int = 128) -> dict:
    """Factorization (float64): Cholesky + triangular inverse, cols^3/3 each. Column loop (float32):
    the lazy batch updates, ~rows cols^2 (2 flops per multiply-add over the upper triangle), plus the
    in-block updates, ~rows cols block_size."""
    factor = 2.0 * cols**3 / 3.0
    loop = float(rows) * cols * cols + float(rows) * cols * block_size
    return {"factor": factor, "column_loop": loop, "total": factor + loop}
