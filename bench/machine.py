"""What the benchmarks run on, and the machine's own float32 GEMM rate measured in the same run."""

from __future__ import annotations

import os
import platform
import time

import numpy as np


def describe() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        import quantease

        gemm_backend = quantease._core.gemm_backend
    except ImportError:
        gemm_backend = "quantease not importable"
    return {
        "cpu": cpu,
        "quantease_gemm": gemm_backend,
        "cores": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "all"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_1min": round(load, 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def gemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Best-of-`repeats` float32 GEMM rate of NumPy's BLAS on n x n matrices (2 n^3 flops)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def best_of(fn, repeats: int = 1):
    """(result of the fastest call, its seconds)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        if dt < best:
            best, out = dt, r
    return out, best
