"""Single-thread wall time of the three H-based solvers on one 4096 x 4096 LLM-like layer: the figure a
refactoring of the C++ core must keep (best of --repeats calls each, interleaved so that a passing load
spike hits every solver alike). Run it with OMP_NUM_THREADS=1 on a quiet machine, before and after.

    OMP_NUM_THREADS=1 python bench/bench_core_timing.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import describe  # noqa: E402
from synthetic import llm_like_problem  # noqa: E402

import quantease  # noqa: E402

CASES = {
    "gptq per channel": lambda W, H: quantease.gptq(W, H, bits=4),
    "gptq act-order g128": lambda W, H: quantease.gptq(W, H, bits=4, group_size=128, act_order=True),
    "quantease 10 sweeps": lambda W, H: quantease.quantease(W, H, bits=4, iters=10),
    "quantease 10 sweeps g128": lambda W, H: quantease.quantease(W, H, bits=4, iters=10, group_size=128),
    "leanquant nonuniform": lambda W, H: quantease.leanquant(W, H, bits=4),
    "leanquant affine": lambda W, H: quantease.leanquant(W, H, bits=4, grid="affine"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    W, H = llm_like_problem(args.size, args.size, seed=0)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    losses: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, call in CASES.items():
            t0 = time.perf_counter()
            r = call(W, H)
            times[name].append(time.perf_counter() - t0)
            losses[name] = float(r.loss)
    info = describe()
    print(f"# {info['date']} | {info['cpu']} | OMP_NUM_THREADS={info['omp_threads']} | load {info['load_1min']}")
    print(f"| solver ({args.size}^2, 4 bits) | best s | median s | loss |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        ts = sorted(ts)
        print(f"| {name} | {ts[0]:.3f} | {ts[len(ts) // 2]:.3f} | {losses[name]:.6g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "seconds": times, "loss": losses}, f, indent=1)


if __name__ == "__main__":
    main()
