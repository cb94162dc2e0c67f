"""The benchmark suite: every solver and its peers on identical layer problems, in one run.

    PYTHONPATH=python python bench/suite.py --quick     # CI smoke: tiny synthetic layers (+2 real), seconds
    PYTHONPATH=python python bench/suite.py             # full: real SmolLM2/MiniLM layers + 4096-wide layers
    PYTHONPATH=python python bench/suite.py --sets smollm2 --bits 3 4 --methods gptq quantease

Layer sets
* ``smollm2`` / ``minilm``: linear layers of the real pretrained models with their real calibration Hessians
  (bench/real_layers.py; collected once, cached under the git-ignored .cache/bench-hessians/).
* ``synthetic``: LLM-shaped layers (bench/synthetic.py): 4096x4096, 4096x11008, 11008x4096 in full mode.

Per row: method, bits, group, relative layer loss = loss / tr(W H Wᵀ), seconds (the solve: result.seconds,
without the final layer_loss),
GFLOP/s from the solver's flop count (bench/flops.py) and its share of this machine's float32 GEMM rate
measured in the same run (bench/machine.py), and the speed-up over the matching peer on the same inputs.
Real layer sets are shown as the median relative loss over their layers, the summed seconds, the aggregate
GFLOP/s (summed flops / summed seconds) and the speed-up over the layers where the peer ran.

The solvers come from the registry (quantease.solvers); ``run_suite(..., solvers={...})`` replaces some by
callables, or by None for a "not in this build" row (the tests check the plumbing that way); a peer that is
not installed prints "not installable: <reason>".

Files: this one runs the sets and holds the entry points; suite_config.py (variants, layer sets, the
configuration), suite_solvers.py (solver and peer calls, flops), suite_sets.py (the layer sets) and
suite_report.py (tables, summary, targets, plot).
Writes bench/results/suite-<mode>.json (every figure + the machine) and suite-<mode>.png (loss vs time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/ and the checkout (for bench.peers); quantease itself comes from the environment or PYTHONPATH=python,
# never from the source tree behind the caller's back (it has no compiled core unless dev-built).
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

from machine import describe, gemm_gflops  # noqa: E402
from suite_config import RESULTS, Config, LayerSet, group_of, label_of, log_line  # noqa: E402
from suite_report import finite_or_none, plot, print_set, summary, table_rows, targets  # noqa: E402
from suite_sets import real_set, synthetic_set  # noqa: E402
from suite_solvers import (  # noqa: E402
    PEER_LABEL,
    Peers,
    call_solver,
    hot_seconds,
    peer_names,
    resolve_solvers,
    solver_flops,
)

import quantease  # noqa: E402
from quantease.solvers import NAMES, SOLVERS  # noqa: E402


def run_set(
    s: LayerSet, cfg: Config, solvers: Dict[str, Optional[Callable]], peers: Peers, gemm: float, log=log_line
) -> dict:
    records: List[dict] = []
    status_rows: List[dict] = []
    variants = [v for v in s.variants if cfg.methods is None or v.method in cfg.methods]
    bits_all = tuple(b for b in s.bits if cfg.bits is None or b in cfg.bits)
    missing = {v.method for v in variants if solvers.get(v.method) is None}
    for v in variants:
        if v.method in missing:
            status_rows.append(
                dict(
                    set=s.name,
                    method=label_of(v, s.group_size),
                    solver=v.method,
                    status="not in this build",
                    detail=f"quantease.{v.method} is not in this build of quantease",
                )
            )
    peer_seen = set()
    for v in variants:
        for pn in peer_names(v, peers, bool(s.gptqmodel_layers)):
            if pn not in peer_seen:
                peer_seen.add(pn)
                if not peers.enabled:
                    continue
                if not peers.ok(pn):
                    status_rows.append(
                        dict(
                            set=s.name,
                            method=f"[peer] {PEER_LABEL[pn]}",
                            solver=pn,
                            status=peers.status.get(pn, "not installable: unknown"),
                        )
                    )
    t_set = time.perf_counter()
    for li, (lname, W, H) in enumerate(s.layers):
        rows, cols = W.shape
        log(f"  {s.name}: layer {li + 1}/{len(s.layers)} {lname} ({rows}x{cols}), {time.perf_counter() - t_set:.0f} s")
        base = float(np.einsum("ij,ij->", W.astype(np.float64) @ H.astype(np.float64), W.astype(np.float64)))
        for v in variants:
            if v.method in missing or (v.label in s.variant_layers and lname not in s.variant_layers[v.label]):
                continue
            G = group_of(v, s.group_size)
            if G > 0 and cols % G:
                continue
            extra = {**s.overrides.get(v.label, {}), **s.overrides.get((v.label, lname), {})}
            solver_extra = {k: val for k, val in extra.items() if not k.startswith("peer_")}
            for bits in bits_all:
                if bits not in v.bits or (lname in s.layer_bits and bits not in s.layer_bits[lname]):
                    continue
                rec = dict(
                    set=s.name,
                    layer=lname,
                    rows=rows,
                    cols=cols,
                    method=label_of(v, s.group_size),
                    solver=v.method,
                    bits=bits,
                    group_size=G,
                    act_order=v.act_order,
                    kwargs={**v.kw(), **solver_extra},
                    status="ok",
                )
                try:
                    loss, sec, info = call_solver(solvers[v.method], v.method, W, H, bits, G, v, solver_extra)
                    for _ in range(cfg.repeats - 1):
                        again = call_solver(solvers[v.method], v.method, W, H, bits, G, v, solver_extra)
                        if again[1] < sec:
                            loss, sec, info = again
                except Exception as exc:  # noqa: BLE001 - a failing solver is a row, not a crash
                    rec.update(status=f"error: {type(exc).__name__}: {exc}")
                    if cfg.verbose:
                        traceback.print_exc()
                    records.append(rec)
                    continue
                fl = solver_flops(v.method, rows, cols, bits, v, info, solver_extra)
                rec.update(loss=loss, rel_loss=loss / base, seconds=sec, wall_seconds=info.get("wall_seconds"))
                if "iters" in info:
                    rec["sweeps"] = info["iters"]
                if fl:
                    rec.update(
                        flops=fl["total"], gflops=fl["total"] / sec / 1e9, gemm_share=fl["total"] / sec / 1e9 / gemm
                    )
                    hs = hot_seconds(info, fl["hot_phase"])
                    if hs and hs > 0:
                        rec.update(
                            hot_phase=fl["hot_phase"],
                            hot_gflops=fl["hot"] / hs / 1e9,
                            hot_gemm_share=fl["hot"] / hs / 1e9 / gemm,
                        )
                # peers on the same inputs
                on_layer = s.peer_layers is None or lname in s.peer_layers
                records.append(rec)
                for pn in peer_names(v, peers, lname in s.gptqmodel_layers):
                    pb = (s.peer_bits or {}).get(pn)
                    if pn in s.peer_layer_map and lname not in s.peer_layer_map[pn]:
                        continue
                    if not on_layer or (pb is not None and bits not in pb) or not peers.ok(pn):
                        continue
                    prec = dict(
                        set=s.name,
                        layer=lname,
                        rows=rows,
                        cols=cols,
                        method=f"[peer] {PEER_LABEL[pn]} ({rec['method']})",
                        solver=pn,
                        peer_of=rec["method"],
                        bits=bits,
                        group_size=G if pn != "leanquant-torch" else -1,
                        act_order=v.act_order,
                        status="ok",
                    )
                    try:
                        ploss, psec, note = peers.run(pn, W, H, bits, G, v, extra)
                        for _ in range(cfg.repeats - 1):
                            again = peers.run(pn, W, H, bits, G, v, extra)
                            if again[1] < psec:
                                ploss, psec, note = again
                    except Exception as exc:  # noqa: BLE001
                        prec.update(status=f"error: {type(exc).__name__}: {exc}")
                        records.append(prec)
                        continue
                    prec.update(
                        loss=finite_or_none(ploss), rel_loss=finite_or_none(ploss / base), seconds=psec, note=note
                    )
                    pfl = solver_flops(v.method, rows, cols, bits, v, {}, solver_extra) if pn != "hqq" else {}
                    if pfl and "extrapolated" not in note:
                        prec.update(
                            flops=pfl["total"],
                            gflops=pfl["total"] / psec / 1e9,
                            gemm_share=pfl["total"] / psec / 1e9 / gemm,
                        )
                    records.append(prec)
                    if "speedup" not in rec:  # the first peer listed is the matching one
                        rec.update(peer=pn, peer_seconds=psec, peer_rel_loss=prec["rel_loss"], speedup=psec / sec)
                        if prec["rel_loss"] is not None:
                            rec["equal_loss"] = bool(
                                abs(rec["rel_loss"] - prec["rel_loss"]) <= 0.02 * max(prec["rel_loss"], 1e-30)
                            )
                if cfg.verbose:
                    log(f"    {lname} {rec['method']} {bits}b: rel {rec['rel_loss']:.4e} {sec:.3f}s")
    return dict(
        name=s.name,
        description=s.description,
        group_size=s.group_size,
        aggregate=s.aggregate,
        layers=[dict(name=n, rows=W.shape[0], cols=W.shape[1]) for n, W, _ in s.layers],
        notes=s.notes,
        status_rows=status_rows,
        records=records,
    )


def run_suite(cfg: Optional[Config] = None, solvers: Optional[Dict[str, Callable]] = None, log=log_line) -> dict:
    """Run the suite; returns the report (what is written as JSON). ``solvers`` replaces solvers by name."""
    cfg = cfg or Config()
    t_start = time.perf_counter()
    solv = resolve_solvers(solvers)
    machine = describe()
    gemm, gemm_threads = _gemm_rate(1024 if cfg.mode == "quick" else 2048)
    machine["gemm_blas_threads"] = gemm_threads
    machine["repeats"] = cfg.repeats
    log(f"# quantease benchmark suite ({cfg.mode}), quantease {quantease.__version__}")
    log(f"machine: {machine}")
    log(
        f"float32 GEMM rate (NumPy BLAS, {gemm_threads} threads, "
        f"{'1024' if cfg.mode == 'quick' else '2048'}^3, same run): "
        f"{gemm:.1f} GFLOP/s"
    )
    for name in SOLVERS:
        log(f"solver {name:10s} {_origin(name, solv[name], solvers)}")
    peers = Peers(cfg.peers, log=log)
    if not cfg.peers:
        log("peers: skipped (--no-peers)")
    results = []
    for name in cfg.sets:
        t0 = time.perf_counter()
        try:
            s = synthetic_set(cfg) if name == "synthetic" else real_set(name, cfg, log=log)
        except Exception as exc:  # noqa: BLE001 - a set that cannot be built is reported, not dropped
            log(f"  {name}: not available: {type(exc).__name__}: {exc}")
            results.append(
                dict(
                    name=name,
                    description="not available",
                    group_size=0,
                    aggregate=True,
                    layers=[],
                    notes=[f"{type(exc).__name__}: {exc}"],
                    status_rows=[],
                    records=[],
                    table=[],
                    seconds=0.0,
                )
            )
            continue
        if s is None:
            continue
        res = run_set(s, cfg, solv, peers, gemm, log=log)
        res["gemm"] = gemm
        res["table"] = table_rows(res)
        res["seconds"] = time.perf_counter() - t0
        print_set(res, log=log)
        results.append(res)
    log("\n## peers (same inputs, same run)")
    for k, v in peers.status.items():
        log(f"   {PEER_LABEL.get(k, k):22s} {v}")
    sm = summary(results)
    tg = targets(results, gemm)
    log("\n## summary: median loss / GPTQ act-order loss (same group), over all layers")
    for x in sm["loss_ratio_vs_gptq"]:
        log(f"   {x['method']:<28} {x['bits']} bits: {x['median']:.3f}  (n={x['n']})")
    log("## summary: share of real layers where QuantEase's loss < GPTQ's (act-order, same group)")
    if not sm["quantease_beats_gptq"]:
        log("   - (no real layers with QuantEase rows)")
    for x in sm["quantease_beats_gptq"]:
        log(f"   {x['method']:<28} {x['bits']} bits: {100 * x['share']:.0f}%  (n={x['n']})")
    if sm["quantease_beats_gptq_default"]:
        log("## summary: share of real layers where QuantEase's loss < GPTQ's without act-order (both at defaults)")
    for x in sm["quantease_beats_gptq_default"]:
        log(f"   {x['method']:<28} {x['bits']} bits: {100 * x['share']:.0f}%  (n={x['n']})")
    log("\n## targets")
    for t in tg:
        fig = (
            "-"
            if t["figure"] is None
            else (f"{100 * t['figure']:.0f}%" if "%" in t["target"] else f"{t['figure']:.2f}")
        )
        log(f"   [{t['status']:>4}] {t['target']}: {fig}  ({t['detail']})")
    machine["load_1min_end"] = round(os.getloadavg()[0], 2)
    report = dict(
        mode=cfg.mode,
        quantease=quantease.__version__,
        machine=machine,
        gemm_gflops=gemm,
        solvers={k: _origin(k, v, solvers) for k, v in solv.items()},
        peers=peers.status,
        sets=results,
        summary=sm,
        targets=tg,
        seconds=time.perf_counter() - t_start,
    )
    if cfg.write:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        jpath = cfg.out_dir / f"suite-{cfg.mode}.json"
        jpath.write_text(json.dumps(report, indent=1, default=_json_default))
        report["json"] = str(jpath)
        log(f"\nwrote {jpath}")
        if cfg.plot:
            p = plot(results, cfg.out_dir / f"suite-{cfg.mode}.png")
            report["plot"] = p
            log(f"plot: {p}")
    log(f"total {report['seconds']:.1f} s")
    return report


def _gemm_rate(n: int):
    """The GEMM rate with as many BLAS threads as the core's OpenMP uses (OMP_NUM_THREADS, else all cores):
    the tests (and some shells) limit OpenBLAS to one thread, which would understate the machine."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            return gemm_gflops(n), threads
    except ImportError:
        return gemm_gflops(n), os.environ.get("OPENBLAS_NUM_THREADS", "default")


def _origin(name: str, fn, injected) -> str:
    if fn is None:
        return "not in this build"
    return "injected" if injected and name in injected else "built"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny synthetic layers (+2 real ones when cached)")
    ap.add_argument(
        "--sets", nargs="+", default=["synthetic", "smollm2", "minilm"], choices=["synthetic", "smollm2", "minilm"]
    )
    ap.add_argument("--bits", nargs="+", type=int, default=None, help="only these bit widths")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(NAMES), help="only these solvers")
    ap.add_argument(
        "--real",
        choices=["auto", "yes", "no"],
        default="auto",
        help="real layer sets: auto = when the model and text are cached; yes = fetch if needed",
    )
    ap.add_argument(
        "--blocks",
        nargs="+",
        default=None,
        metavar="SET:B,B",
        help="blocks of a real set, e.g. smollm2:0,10,20,29 minilm:0,3,5",
    )
    ap.add_argument("--n-samples", type=int, default=None, help="calibration samples (windows or sentences)")
    ap.add_argument("--seq-len", type=int, default=None, help="calibration window length in tokens")
    ap.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="ROWSxCOLS",
        help="synthetic layer shapes instead of the mode's, e.g. 4096x4096",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="best of N calls for every solver and peer (use 3+ on a shared machine)"
    )
    ap.add_argument("--no-peers", action="store_true", help="skip the peers")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the JSON and the PNG (default bench/results)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every solve as it finishes")
    args = ap.parse_args(argv)
    blocks = None
    if args.blocks:
        blocks = {}
        for item in args.blocks:
            name, _, bs = item.partition(":")
            blocks[name] = tuple(int(b) for b in bs.split(",") if b)
    cfg = Config(
        mode="quick" if args.quick else "full",
        sets=tuple(args.sets),
        bits=tuple(args.bits) if args.bits else None,
        methods=tuple(args.methods) if args.methods else None,
        real=args.real,
        peers=not args.no_peers,
        blocks=blocks,
        n_samples=args.n_samples,
        seq_len=args.seq_len,
        out_dir=Path(args.out),
        plot=not args.no_plot,
        verbose=args.verbose,
        repeats=max(1, args.repeats),
        shapes=tuple(tuple(int(x) for x in sh.lower().split("x")) for sh in args.shapes) if args.shapes else None,
    )
    return run_suite(cfg)


if __name__ == "__main__":
    main()
