"""Peak resident memory of every solver against what it must hold: W + H + its documented workspace.

Each (solver, shape) runs in a fresh interpreter: W (rows x cols, float32) and H (cols x cols, float32,
positive definite: a diagonal plus a rank-64 part, built without large temporaries) are made, the peak
resident size is reset (/proc/self/clear_refs, Linux), the solver runs once, and the peak during the call
is read (VmHWM). Printed per call: W and H in MB, the peak above what the process held before the call
(inputs included in neither), and the workspace bound of README/bench README:

    peak above the inputs  <=  workspace(solver) = a * cols^2 + b * rows * cols + 16 MB   (SOLVERS below)

Peak memory is a property of the code, not a timing: any machine gives the same figures up to allocator
noise (a few MB). QuantEase and EasyQuant run 2 sweeps / 10 Adam steps: their buffers are all allocated by
the first one, so more only costs time.

    PYTHONPATH=python python bench/bench_memory.py                  # 4096 x 11008 and 11008 x 4096
    PYTHONPATH=python python bench/bench_memory.py --shapes 512x1376 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MB = 1 << 20

# solver -> (the call, a: bytes per cols^2, b: bytes per rows*cols) of the documented bound. The terms, from
# the code: the float64 factor of H (8 cols^2, of which the lower half is touched) and GPTQ's float32
# propagation factor P (4 cols^2, upper half touched); QuantEase's float32 Sigma = H scaled, the residual
# gradient G and working copies of W (rows x cols each); the result (weight float32 + codes uint8 = 5 bytes
# per entry), the loss's float64 W - W_hat (8 bytes per entry) and a processing-order copy of W (4).
# RTN and EasyQuant hold the result and per-group grids only (EasyQuant's Adam state is per group).
SOLVERS = {
    "rtn_g128": ("quantease.rtn(W, bits=4, group_size=128)", 0, 8),
    "gptq_act_g128": ("quantease.gptq(W, H, bits=4, group_size=128, act_order=True)", 12, 24),
    "quantease": ("quantease.quantease(W, H, bits=4, iters=2)", 16, 40),
    "easyquant": ("quantease.easyquant(W, bits=4, steps=10)", 0, 16),
    "leanquant": ("quantease.leanquant(W, H, bits=4)", 12, 24),
    "leanquant_affine": ("quantease.leanquant(W, H, bits=4, grid='affine')", 12, 24),
    "gguf_gptq_q4_k": ("quantease.gptq(W, H, gguf='Q4_K', act_order=True)", 12, 24),
}
# Per process, whatever the shape: the threads' panel buffers and the allocator's arenas.
FIXED = 16 * MB

CHILD = r"""
import json, sys, numpy as np, quantease

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
rows, cols = {rows}, {cols}
rng = np.random.default_rng(0)
W = rng.standard_normal((rows, cols), dtype=np.float32)
U = rng.standard_normal((cols, 64), dtype=np.float32)
H = np.empty((cols, cols), dtype=np.float32)
np.matmul(U, U.T, out=H)
H[np.diag_indices(cols)] += cols / 8
del U

def call(W, H):
    return {call}

# One small call first: OpenMP's and OpenBLAS's thread pools and buffers, and the pages of the library, are
# set up once per process, not per call.
small = rng.standard_normal((4, 256), dtype=np.float32)
call(small, np.eye(256, dtype=np.float32) + 0.01)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident size
    f.write("5")
result = call(W, H)
peak = status("VmHWM")
print(json.dumps(dict(before=before, peak=peak)))
"""


def measure(name: str, rows: int, cols: int) -> dict:
    call, a, b = SOLVERS[name]
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(rows=rows, cols=cols, call=call)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{name} {rows}x{cols}: {out.stderr[-2000:]}")
    m = json.loads(out.stdout.strip().splitlines()[-1])
    bound = a * cols * cols + b * rows * cols + FIXED
    return dict(
        solver=name,
        rows=rows,
        cols=cols,
        W_MB=4 * rows * cols / MB,
        H_MB=4 * cols * cols / MB,
        peak_MB=m["peak"] / MB,
        above_inputs_MB=(m["peak"] - m["before"]) / MB,
        bound_MB=bound / MB,
        within=m["peak"] - m["before"] <= bound,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["4096x11008", "11008x4096"], help="rows x cols")
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    rows_out = []
    print(
        f"{'solver':18s} {'shape':>12s} {'W MB':>8s} {'H MB':>8s} {'peak MB':>9s} {'above inputs':>13s} "
        f"{'bound MB':>9s}  within"
    )
    for shape in args.shapes:
        rows, cols = (int(x) for x in shape.lower().split("x"))
        for name in args.solvers:
            r = measure(name, rows, cols)
            rows_out.append(r)
            print(
                f"{name:18s} {shape:>12s} {r['W_MB']:8.0f} {r['H_MB']:8.0f} {r['peak_MB']:9.0f} "
                f"{r['above_inputs_MB']:13.0f} {r['bound_MB']:9.0f}  {'yes' if r['within'] else 'NO'}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
