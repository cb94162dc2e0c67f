"""RTN and GPTQ on LLM-shaped layers: seconds, GFLOP/s against this machine's GEMM rate, and the speed-up
over a straightforward PyTorch-CPU GPTQ (bench/peers/torch_gptq.py) on identical inputs at equal loss.

    python bench/bench_gptq.py            # 1024^2, 4096^2, 4096x11008, 11008x4096 (minutes)
    python bench/bench_gptq.py --quick    # small layers, seconds (CI smoke)
    python bench/bench_gptq.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flops import gptq_flops  # noqa: E402
from machine import best_of, describe, gemm_gflops  # noqa: E402
from synthetic import llm_like_problem, relative_loss  # noqa: E402

import quantease  # noqa: E402

FULL = [(1024, 1024), (4096, 4096), (4096, 11008), (11008, 4096)]
QUICK = [(256, 512), (512, 1024)]


def torch_peer():
    try:
        import torch
        from peers.torch_gptq import gptq as torch_gptq

        return torch_gptq, f"torch {torch.__version__} port of the reference fasterquant (bench/peers/torch_gptq.py)"
    except Exception as exc:  # noqa: BLE001 - report any reason the peer is missing
        return None, f"not available: {type(exc).__name__}: {exc}"


def run(shapes, bits: int, peer_on: bool):
    peer, peer_desc = torch_peer() if peer_on else (None, "skipped (--no-peer)")
    gemm = gemm_gflops()
    print(f"machine: {describe()}")
    print(f"float32 GEMM rate (NumPy BLAS, 2048^3): {gemm:.1f} GFLOP/s")
    print(f"peer: {peer_desc}\n")
    header = (
        f"{'layer':>12} {'method':>6} {'group':>5} {'act':>3} {'seconds':>8} {'GFLOP/s':>8} {'%GEMM':>6} "
        f"{'rel.loss':>10} {'peer s':>8} {'peer rel.loss':>13} {'speed-up':>8}"
    )
    print(header)
    print("-" * len(header))
    rows_out = []
    for rows, cols in shapes:
        W, H = llm_like_problem(rows, cols, seed=rows + cols)
        layer = f"{rows}x{cols}"
        for gs in (-1, 128):
            res, sec = best_of(lambda: quantease.rtn(W, bits=bits, group_size=gs))
            rl = relative_loss(quantease.layer_loss(W, res.weight, H), W, H)
            print(f"{layer:>12} {'rtn':>6} {gs:>5} {'-':>3} {sec:8.3f} {'':>8} {'':>6} {rl:10.3e}")
            rows_out.append(dict(layer=layer, method="rtn", group_size=gs, act_order=False, seconds=sec, rel_loss=rl))
        for gs in (-1, 128):
            for act in (False, True):
                res = quantease.gptq(W, H, bits=bits, group_size=gs, act_order=act)
                sec = res.seconds
                fl = gptq_flops(rows, cols)["total"]
                rl = relative_loss(res.loss, W, H)
                rec = dict(
                    layer=layer,
                    method="gptq",
                    group_size=gs,
                    act_order=act,
                    seconds=sec,
                    gflops=fl / sec / 1e9,
                    rel_loss=rl,
                    phases=res.info["phase_seconds"],
                )
                line = (
                    f"{layer:>12} {'gptq':>6} {gs:>5} {'on' if act else 'off':>3} {sec:8.3f} "
                    f"{fl / sec / 1e9:8.1f} {100 * fl / sec / 1e9 / gemm:5.0f}% {rl:10.3e}"
                )
                if peer is not None:
                    Qp, psec = peer(W, H, bits=bits, group_size=gs, act_order=act)
                    prl = relative_loss(quantease.layer_loss(W, Qp, H), W, H)
                    rec.update(peer_seconds=psec, peer_rel_loss=prl, speedup=psec / sec)
                    line += f" {psec:8.3f} {prl:13.3e} {psec / sec:7.1f}x"
                print(line)
                rows_out.append(rec)
    return {"machine": describe(), "gemm_gflops": gemm, "peer": peer_desc, "bits": bits, "results": rows_out}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small layers only (seconds)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    out = run(QUICK if args.quick else FULL, args.bits, not args.no_peer)
    speedups = [r["speedup"] for r in out["results"] if "speedup" in r]
    if speedups:
        print(
            f"\nGPTQ speed-up over the PyTorch-CPU peer: median {np.median(speedups):.1f}x, "
            f"min {min(speedups):.1f}x (target >= 3x at equal loss)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
