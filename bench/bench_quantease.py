"""QuantEase on LLM-shaped layers: seconds per sweep, sweeps run, GFLOP/s against this machine's GEMM rate,
where the time goes, our GPTQ on the same layer, the PyTorch-CPU port (bench/peers/torch_quantease.py) on
identical inputs, and the loss against GPTQ at 3 and 4 bits.

    python bench/bench_quantease.py            # 4096^2 (full 30-sweep runs) and 4096x11008 (timed sweeps)
    python bench/bench_quantease.py --quick    # small layers, seconds (CI smoke)
    python bench/bench_quantease.py --json out.json

What is measured how (all on one machine, in one run; a busy machine shows as load_1min in the header):

* "full" layers run the whole default schedule (30 sweeps, relaxed every third, then the polish sweeps to
  coordinate-wise optimality). "timed" layers (4096x11008) run the first 4 sweeps only (first, relaxed,
  quantized after it, quantized) and the 30-sweep time is extrapolated from them by kind: first + 9 x
  relaxed + 9 x after-relaxed + 11 x the fourth (on the high side: later quantized sweeps change fewer
  entries than the fourth), polish excluded.
* GFLOP/s: a dense sweep is 2 rows cols^2 flops (Δ Σ over all columns); the rate is that of the first sweep
  from W (every entry changes, so the full update runs as GEMMs).
* time split: phase wall seconds (prepare: Σ in processing order; init: grids, start point, tr(W Σ W^T);
  sweeps; polish), the CPU seconds of the sweeps' GEMM part vs their column loop, and the wall seconds by
  kind of sweep (info["sweep_times"]): the first sweep (dense), relaxed sweeps (half the flops: only the
  later columns get the update), the quantized sweep after each (a GEMM of the relaxed changes, half the
  flops, plus a sparse update by the entries whose grid point moved), the other quantized sweeps (sparse:
  the entries that changed), polish sweeps (sparse, rows left unchanged skipped).
* pair and floor: a relaxed sweep plus the quantized sweep after it against the dense first sweep (their
  floor is one dense sweep: the relaxed changes are dense), and the relaxed schedule's floor, 1 + 9 dense
  sweeps at the GEMM rate; relaxed=False (up to 30 quantized sweeps, sparse after the first; it stops when a
  sweep changes nothing) against our GPTQ.
* whole call: the wall time of quantease.quantease() as a user sees it (polish and the float64
  result.loss included); the speed-up over the peer is given for both the 30-sweep schedule and the
  whole call.
* peer: the PyTorch port is timed for 2 sweeps on a slice of the rows (rows are independent problems and
  its cost is linear in them) and extrapolated to all rows and 30 sweeps: (setup + 30 x sweep) x rows/slice.
  This favours the peer: on a slice its per-column working set (the changed columns x slice rows) stays in
  cache, on all rows it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import describe, gemm_gflops  # noqa: E402
from synthetic import llm_like_problem, relative_loss  # noqa: E402

import quantease  # noqa: E402
from quantease import _core  # noqa: E402

# (rows, cols, mode, peer row slice)
FULL = [(4096, 4096, "full", 256), (4096, 11008, "timed", 96)]
QUICK = [(256, 512, "full", 256), (512, 1024, "full", 128)]
SCHEDULE = 30


def sweep_flops(rows: int, cols: int) -> float:
    return 2.0 * rows * cols * cols


def torch_peer():
    try:
        import torch
        from peers.torch_quantease import quantease as torch_quantease

        return torch_quantease, f"torch {torch.__version__} port of the official loop (bench/peers/torch_quantease.py)"
    except Exception as exc:  # noqa: BLE001 - report any reason the peer is missing
        return None, f"not available: {type(exc).__name__}: {exc}"


def dense_sweeps(W, H, bits: int, n: int = 4) -> dict:
    """The first n sweeps from W, no polish. Sweep 0 quantizes W (every entry changes: a dense sweep, the
    rate), sweep 1 is relaxed, sweep 2 quantizes the relaxed point, sweep 3 is a plain quantized sweep."""
    t0 = time.perf_counter()
    out = _core.quantease(
        W,
        H,
        bits=bits,
        group_size=-1,
        sym=False,
        act_order=True,
        iters=n,
        init="w",
        relaxed=True,
        tol=0.0,
        outliers=0.0,
        outlier_structure="unstructured",
        outlier_step=1.0,
        block_size=128,
        polish=False,
    )
    total = time.perf_counter() - t0
    ph = out["phase_seconds"]
    times = list(out["sweep_times"])
    return dict(
        seconds=total,
        sweeps=n,
        sweep_seconds=times[0],
        times=times,
        phases=ph,
        changes=list(out["changes"]),
        gemm_cpu=out["gemm_cpu_seconds"],
        column_cpu=out["column_cpu_seconds"],
    )


def sweep_split(info) -> dict:
    """Wall seconds and count per kind of sweep, from info['sweep_times']."""
    q, pol, t = info["quantized"], info["polish"], info["sweep_times"]
    split: dict = {}
    for i, sec in enumerate(t):
        if pol[i]:
            kind = "polish"
        elif i == 0:
            kind = "first"
        elif not q[i]:
            kind = "relaxed"
        elif not q[i - 1]:
            kind = "after relaxed"
        else:
            kind = "quantized"
        n, total = split.get(kind, (0, 0.0))
        split[kind] = (n + 1, total + sec)
    return split


def run(shapes, peer_on: bool, gptq_init: bool):
    peer, peer_desc = torch_peer() if peer_on else (None, "skipped (--no-peer)")
    gemm = gemm_gflops()
    print(f"machine: {describe()}")
    print(f"float32 GEMM rate (NumPy BLAS, 2048^3, same run): {gemm:.1f} GFLOP/s")
    print(f"peer: {peer_desc}\n")
    results = []
    for rows, cols, mode, peer_rows in shapes:
        layer = f"{rows}x{cols}"
        W, H = llm_like_problem(rows, cols, seed=rows + cols)
        rec = dict(layer=layer, mode=mode)
        print(f"== {layer} ({mode})")
        gptq = {b: quantease.gptq(W, H, bits=b, act_order=True) for b in ((4, 3) if mode == "full" else (4,))}
        rec["gptq_seconds"] = gptq[4].seconds
        print(f"  GPTQ 4-bit act-order: {gptq[4].seconds:.2f} s, rel.loss {relative_loss(gptq[4].loss, W, H):.4e}")

        d = dense_sweeps(W, H, 4)
        rate = sweep_flops(rows, cols) / d["sweep_seconds"] / 1e9
        col_share = d["column_cpu"] / max(d["column_cpu"] + d["gemm_cpu"], 1e-12)
        rec.update(
            dense_sweep_seconds=d["sweep_seconds"],
            dense_gflops=rate,
            dense_pct_gemm=100 * rate / gemm,
            dense_phases=d["phases"],
            dense_column_share=col_share,
            first_sweeps=d["times"],
        )
        t = d["times"]
        print(
            f"  dense sweep (the first): {t[0]:.3f} s = {rate:.1f} GFLOP/s ({100 * rate / gemm:.0f}% of GEMM); "
            f"then relaxed {t[1]:.3f} s, quantized after it {t[2]:.3f} s, quantized {t[3]:.3f} s; over these 4 "
            f"sweeps CPU time in the column loop {100 * col_share:.0f}%, in GEMM/axpy updates "
            f"{100 - 100 * col_share:.0f}%"
        )
        fixed = d["phases"]["prepare"] + d["phases"]["init"] + d["phases"]["output"]
        # A relaxed sweep and the quantized sweep after it need at least one dense update between them (the
        # relaxed changes are dense): the pair against the dense first sweep, and the schedule's floor of
        # 1 + 9 dense sweeps at the machine's GEMM rate (the other 20 quantized sweeps are sparse, left out).
        pair = (t[1] + t[2]) / t[0]
        bound = (1 + 9) * sweep_flops(rows, cols) / (gemm * 1e9)
        rec.update(pair_over_dense=pair, relaxed_schedule_floor_seconds=bound)
        print(
            f"  relaxed + quantized after it: {t[1] + t[2]:.3f} s = {pair:.2f} x the dense sweep (floor 1x, plus "
            f"the sparse grid moves); relaxed schedule floor: 10 dense sweeps at the GEMM rate = {bound:.2f} s"
        )

        if mode == "full":
            for bits in (4, 3):
                t_call = time.perf_counter()
                r = quantease.quantease(W, H, bits=bits)
                whole = time.perf_counter() - t_call
                ph = r.info["phase_seconds"]
                n_main = sum(1 for p in r.info["polish"] if not p)
                n_pol = r.iters - n_main
                schedule = ph["prepare"] + ph["init"] + ph["sweeps"] + ph["output"]
                key = f"qe{bits}"
                split = sweep_split(r.info)
                rec[key] = dict(
                    seconds=r.seconds,
                    whole_call_seconds=whole,
                    schedule_seconds=schedule,
                    sweep_split={k: dict(n=n, seconds=v) for k, (n, v) in split.items()},
                    sweeps=n_main,
                    polish_sweeps=n_pol,
                    converged=r.info["converged"],
                    phases=ph,
                    per_sweep=ph["sweeps"] / max(n_main, 1),
                    gemm_cpu=r.info["gemm_cpu_seconds"],
                    column_cpu=r.info["column_cpu_seconds"],
                    rel_loss=relative_loss(r.loss, W, H),
                    vs_gptq=r.loss / gptq[bits].loss,
                    changes=r.info["changes"],
                )
                print(
                    f"  QuantEase {bits}-bit: {r.seconds:.2f} s total ({n_main} sweeps {ph['sweeps']:.2f} s = "
                    f"{ph['sweeps'] / max(n_main, 1):.3f} s/sweep, {n_pol} polish sweeps {ph.get('polish', 0):.2f} s, "
                    f"prepare {ph['prepare']:.2f} s, init {ph['init']:.2f} s), converged={r.info['converged']}, "
                    f"loss/GPTQ {r.loss / gptq[bits].loss:.3f}"
                )
                print(
                    f"    whole call {whole:.2f} s (result.loss {whole - r.seconds:.2f} s); by kind of sweep: "
                    + ", ".join(f"{k} {n} x {v / n:.3f} s = {v:.2f} s" for k, (n, v) in split.items())
                )
                if gptq_init:
                    rg = quantease.quantease(W, H, bits=bits, init="gptq")
                    rec[f"qe{bits}_gptq_init"] = dict(
                        seconds=rg.seconds,
                        sweeps=rg.iters,
                        vs_gptq=rg.loss / gptq[bits].loss,
                        rel_loss=relative_loss(rg.loss, W, H),
                    )
                    print(
                        f"  QuantEase {bits}-bit from GPTQ (init='gptq'): {rg.seconds:.2f} s, {rg.iters} sweeps, "
                        f"loss/GPTQ {rg.loss / gptq[bits].loss:.3f}"
                    )
            # relaxed=False: up to 30 quantized sweeps (only the first is dense), polish excluded
            rn = quantease.quantease(W, H, bits=4, relaxed=False)
            ph = rn.info["phase_seconds"]
            n_main = sum(1 for p in rn.info["polish"] if not p)
            plain = ph["prepare"] + ph["init"] + ph["sweeps"] + ph["output"]
            rec["qe4_unrelaxed"] = dict(
                seconds=rn.seconds,
                schedule_seconds=plain,
                sweeps=n_main,
                ratio_to_gptq=plain / gptq[4].seconds,
                vs_gptq=rn.loss / gptq[4].loss,
                sweep_split={k: dict(n=n, seconds=v) for k, (n, v) in sweep_split(rn.info).items()},
            )
            print(
                f"  QuantEase 4-bit relaxed=False: {n_main} sweeps, schedule {plain:.2f} s = "
                f"{plain / gptq[4].seconds:.1f}x our GPTQ, whole {rn.seconds:.2f} s, "
                f"loss/GPTQ {rn.loss / gptq[4].loss:.3f}"
            )
            ours30 = rec["qe4"]["schedule_seconds"]
            rec["ours_whole_call_seconds"] = rec["qe4"]["whole_call_seconds"]
            rec["ours_30_seconds"] = ours30
            rec["ours_30_how"] = "measured (30-sweep schedule, polish excluded)"
        else:
            t = d["times"]
            ours30 = fixed + t[0] + 9 * t[1] + 9 * t[2] + (SCHEDULE - 19) * t[3]
            rec["ours_30_seconds"] = ours30
            rec["ours_30_how"] = (
                "extrapolated: prepare+init+output + first + 9 x relaxed + 9 x after-relaxed + "
                "11 x the fourth sweep (high side)"
            )
        rec["ratio_to_gptq"] = ours30 / gptq[4].seconds
        rec["floor_ratio_to_gptq"] = bound / gptq[4].seconds
        print(
            f"  30 sweeps: {ours30:.1f} s ({rec['ours_30_how']}) = {rec['ratio_to_gptq']:.1f}x our GPTQ "
            f"(stretch target <= 4x; the relaxed schedule's floor is {rec['floor_ratio_to_gptq']:.1f}x)"
        )

        if peer is not None:
            pr = min(peer_rows, rows)
            info: dict = {}
            peer(W[:pr], H, bits=4, act_order=True, iters=SCHEDULE, max_sweeps=2, track_loss=False, info=info)
            per = float(np.mean(info["sweep_seconds"]))
            peer30 = (info["setup_seconds"] + SCHEDULE * per) * rows / pr
            rec.update(
                peer_rows=pr, peer_sweep_seconds=per * rows / pr, peer_30_seconds=peer30, speedup=peer30 / ours30
            )
            whole_txt = ""
            if "ours_whole_call_seconds" in rec:
                rec["speedup_whole_call"] = peer30 / rec["ours_whole_call_seconds"]
                whole_txt = f", on our whole call (polish and result.loss included) {rec['speedup_whole_call']:.1f}x"
            print(
                f"  torch port: {per:.2f} s/sweep on {pr} rows -> {per * rows / pr:.1f} s/sweep on {rows} rows, "
                f"30 sweeps ~{peer30:.0f} s; our speed-up on the 30 sweeps {peer30 / ours30:.1f}x{whole_txt} "
                f"(target >= 10x)"
            )
        results.append(rec)
        print()
    return {"machine": describe(), "gemm_gflops": gemm, "peer": peer_desc, "results": results}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small layers only (seconds)")
    ap.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument(
        "--gptq-init", action="store_true", help="also run init='gptq' on the full layers (always on with --quick)"
    )
    args = ap.parse_args(argv)
    out = run(QUICK if args.quick else FULL, not args.no_peer, args.quick or args.gptq_init)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()
