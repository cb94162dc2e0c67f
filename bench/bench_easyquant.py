"""EasyQuant benchmark: seconds per layer, reconstruction error against RTN (and HQQ / NF4 when installed),
the outlier fraction on real weights, and the layer loss against GPTQ when an H is available.

    PYTHONPATH=python OMP_NUM_THREADS=2 python bench/bench_easyquant.py [--quick] [--json out.json]

What the numbers mean
* seconds: wall time of one ``quantease.easyquant`` call (median of ``--reps``), the whole call: outlier
  statistics, the per-channel range optimisation (one sort, 100 Adam steps, the safety-net search), codes,
  weight, CSR. Weights are LLM-like (Gaussian bulk, lognormal row scales, 1 % of columns 2-4x larger).
* rel. error: ||W - W_hat||_F^2 / ||W||_F^2 (outliers included in W_hat where a method keeps them).
  "start" rebuilds the weight from the abs-max start ranges (outliers isolated, no range optimisation);
  "Adam only" from Adam's last iterate (the paper's method, no safety net); "no outliers" is
  ``outlier_sigma=None`` (range optimisation alone). bits/weight counts codes, one float16 scale (and
  zero) per row or group, and 16-bit value + 32-bit index per outlier.
* real weights: SmolLM2-135M from the local cache (``quantease.models``); these weights were dequantized
  from Q4_1 (a 4-bit grid per 32 columns), so per-channel errors are meaningful but g32 would be trivial.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import quantease  # noqa: E402


def llm_weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Gaussian bulk, lognormal spread of row scales, 1 % of input columns 2-4x larger (as tests/test_easyquant)."""
    rng = np.random.default_rng(seed)
    row_scale = np.exp(0.2 * rng.standard_normal((rows, 1))).astype(np.float32)
    col_scale = np.ones(cols, np.float32)
    idx = rng.choice(cols, max(1, cols // 100), replace=False)
    col_scale[idx] = rng.uniform(2.0, 4.0, idx.size)
    W = rng.standard_normal((rows, cols), dtype=np.float32)
    W *= 0.02 * row_scale * col_scale
    return W


def rel_error(W: np.ndarray, W_hat: np.ndarray, chunk: int = 512) -> float:
    num = den = 0.0
    for r in range(0, W.shape[0], chunk):
        w = W[r : r + chunk].astype(np.float64)
        num += float(np.sum((w - W_hat[r : r + chunk]) ** 2))
        den += float(np.sum(w * w))
    return num / den


def rebuild(W: np.ndarray, res, scales: np.ndarray, chunk: int = 512) -> np.ndarray:
    """EasyQuant's weight with other per-channel scales (same zeros, same outliers), float32 quantizer."""
    maxq = np.float32(2**res.bits - 1)
    outliers = res.outliers
    out = np.empty_like(W)
    g = res.g_idx.astype(np.int64)
    for r in range(0, W.shape[0], chunk):
        s = scales[r : r + chunk][:, g]
        z = res.zeros[r : r + chunk][:, g]
        c = np.clip(np.rint(W[r : r + chunk] / s) + z, np.float32(0), maxq)
        out[r : r + chunk] = s * (c - z)
    rows = np.repeat(np.arange(W.shape[0]), np.diff(outliers.indptr))
    out[rows, outliers.indices] = outliers.values
    return out


def bits_per_weight(res, group_size: int, zero: bool) -> float:
    rows, cols = res.shape
    per_group = 16 * (2 if zero else 1)
    groups = 1 if group_size == -1 else cols // group_size
    nnz = 0 if res.outliers is None else res.outliers.nnz
    return res.bits + per_group * groups / cols + 48.0 * nnz / (rows * cols)


def timed(f, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)), [round(t, 4) for t in times]


def peers():
    """name -> callable(W, bits, group_size) -> W_hat, for the data-free peers that import here."""
    found = {}
    try:  # the shared adapters, when the peer helper's bench/peers is present
        from bench.peers import installed  # type: ignore

        for name in ("hqq", "bitsandbytes"):
            if installed.available(name):
                found[name] = (lambda n: lambda W, bits, gs: installed.run(n, W, None, bits=bits, group_size=gs)[0])(
                    name
                )
        return found
    except Exception:
        pass
    try:
        import torch
        from hqq.core.quantize import Quantizer

        def hqq(W, bits, gs):
            Wq, meta = Quantizer.quantize(
                torch.from_numpy(W.copy()),
                nbits=bits,
                group_size=gs,
                optimize=True,
                round_zero=(bits == 4),
                axis=1,
                bitpack=False,
                compute_dtype=torch.float32,
                device="cpu",
            )
            meta["compute_dtype"] = torch.float32
            return Quantizer.dequantize(Wq, meta).float().numpy()

        found["hqq"] = hqq
    except Exception:
        pass
    try:
        import bitsandbytes.functional as F
        import torch

        def nf4(W, bits, gs):
            q, state = F.quantize_4bit(torch.from_numpy(W.copy()), blocksize=gs, quant_type="nf4")
            return F.dequantize_4bit(q, state).float().numpy()

        found["bitsandbytes"] = nf4
    except Exception:
        pass
    return found


def speed_and_quality(shapes, reps, with_peers, report):
    print("\n## Speed and reconstruction error on LLM-like weights (4 bits)\n")
    for rows, cols in shapes:
        W = llm_weights(rows, cols, seed=rows + cols)
        quantease.easyquant(W[:32])  # warm-up (thread pool, page faults of the small buffers)
        eq, t_eq, all_eq = timed(lambda: quantease.easyquant(W), reps)
        _, t_noadam, _ = timed(lambda: quantease.easyquant(W, steps=0), 1)
        eq_g128, t_g128, _ = timed(lambda: quantease.easyquant(W, group_size=128), 1)
        eq_asym, t_asym, _ = timed(lambda: quantease.easyquant(W, sym=False), 1)
        eq_noout, _, _ = timed(lambda: quantease.easyquant(W, outlier_sigma=None), 1)
        rtn, t_rtn, _ = timed(lambda: quantease.rtn(W, sym=True), reps)
        src = np.bincount(eq.info["source"].ravel(), minlength=3) / eq.info["source"].size
        row = dict(
            shape=[rows, cols],
            seconds=t_eq,
            seconds_all=all_eq,
            seconds_steps0=t_noadam,
            seconds_g128=t_g128,
            seconds_asym=t_asym,
            seconds_rtn_sym=t_rtn,
            outlier_fraction=eq.outlier_fraction,
            source_share=dict(start=float(src[0]), adam=float(src[1]), search=float(src[2])),
        )
        errors = {
            "RTN sym": rel_error(W, rtn.weight),
            "RTN asym": rel_error(W, quantease.rtn(W, sym=False).weight),
            "RTN sym mse": rel_error(W, quantease.rtn(W, sym=True, mse=True).weight),
            "EQ no outliers": rel_error(W, eq_noout.weight),
            "EQ start (outliers only)": rel_error(W, rebuild(W, eq, eq.info["start_scales"])),
            "EQ Adam only (paper)": rel_error(W, rebuild(W, eq, eq.info["adam_scales"])),
            "EQ (default)": rel_error(W, eq.weight),
            "EQ asym": rel_error(W, eq_asym.weight),
        }
        bpw = {
            "RTN sym": 4 + 16 / cols,
            "RTN asym": 4 + 32 / cols,
            "RTN sym mse": 4 + 16 / cols,
            "EQ no outliers": bits_per_weight(eq_noout, -1, False),
            "EQ start (outliers only)": bits_per_weight(eq, -1, False),
            "EQ Adam only (paper)": bits_per_weight(eq, -1, False),
            "EQ (default)": bits_per_weight(eq, -1, False),
            "EQ asym": bits_per_weight(eq_asym, -1, True),
        }
        # groups of 64 (HQQ's and NF4's default blocks) and 128
        eq_g64 = quantease.easyquant(W, group_size=64)
        errors["EQ g64"] = rel_error(W, eq_g64.weight)
        bpw["EQ g64"] = bits_per_weight(eq_g64, 64, False)
        errors["EQ g128"] = rel_error(W, eq_g128.weight)
        bpw["EQ g128"] = bits_per_weight(eq_g128, 128, False)
        errors["RTN asym g64"] = rel_error(W, quantease.rtn(W, group_size=64).weight)
        bpw["RTN asym g64"] = 4 + 32 / 64
        peer_seconds = {}
        if with_peers:
            for name, f in peers().items():
                label = {"hqq": "HQQ g64 (lp 0.7)", "bitsandbytes": "NF4 b64"}[name]
                t0 = time.perf_counter()
                W_hat = f(W, 4, 64)
                peer_seconds[label] = time.perf_counter() - t0
                errors[label] = rel_error(W, W_hat)
                bpw[label] = 4 + (32 if name == "hqq" else 16) / 64
        row.update(rel_error=errors, bits_per_weight=bpw, peer_seconds=peer_seconds)
        report["synthetic"].append(row)
        print(
            f"### {rows} x {cols}: easyquant {t_eq:.3f} s (runs {all_eq}), steps=0 {t_noadam:.3f} s, "
            f"g128 {t_g128:.3f} s, asym {t_asym:.3f} s; RTN sym {t_rtn:.3f} s; outliers "
            f"{eq.outlier_fraction:.3%}; final range from start/Adam/search: {src[0]:.1%}/{src[1]:.1%}/{src[2]:.1%}"
        )
        print("\n| method | rel. error | bits/weight | seconds |\n|---|---:|---:|---:|")
        secs = {"RTN sym": t_rtn, "EQ (default)": t_eq, "EQ asym": t_asym, "EQ g128": t_g128, **peer_seconds}
        for k, v in errors.items():
            s = f"{secs[k]:.3f}" if k in secs else ""
            print(f"| {k} | {v:.5f} | {bpw[k]:.3f} | {s} |")
        print()


def real_weights(quick: bool, report):
    try:
        from safetensors.numpy import safe_open

        from quantease.models import resolve_cache_dir
    except Exception as e:  # pragma: no cover
        print(f"\n(real weights skipped: {e})")
        return
    path = resolve_cache_dir() / "models" / "smollm2-135m" / "model.safetensors"
    if not path.exists():
        print(f"\n(real weights skipped: {path} not cached; see quantease.models)")
        return
    print("\n## SmolLM2-135M linear layers (real weights)\n")
    with safe_open(str(path), "np") as f:
        names = sorted(k for k in f.keys() if k.startswith("model.layers.") and k.endswith("proj.weight"))
        fractions = {}
        for k in names:
            W = f.get_tensor(k).astype(np.float32)
            W64 = W.astype(np.float64)
            fractions[k] = float(np.mean(np.abs(W64 - W64.mean()) >= 3.0 * W64.std()))
        fr = np.array(list(fractions.values()))
        by_kind = {}
        for k, v in fractions.items():
            by_kind.setdefault(k.split(".")[-2], []).append(v)
        print(
            f"3-sigma outlier fraction over {len(fr)} layers: min {fr.min():.3%}, median {np.median(fr):.3%}, "
            f"max {fr.max():.3%}; below 1 %: {np.mean(fr < 0.01):.0%} of the layers"
        )
        print("\n| projection | median | max |\n|---|---:|---:|")
        for kind, v in sorted(by_kind.items()):
            print(f"| {kind} | {np.median(v):.3%} | {np.max(v):.3%} |")
        report["real"] = dict(fractions=fractions)
        layers = [3] if quick else [3, 15, 27]
        rows_out = []
        print("\n| layer | bits | outliers | RTN sym | RTN sym mse | EQ start | EQ Adam only | EQ | EQ seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for layer in layers:
            for proj in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj"):
                W = f.get_tensor(f"model.layers.{layer}.{proj}.weight").astype(np.float32)
                for bits in (3, 4):
                    eq = quantease.easyquant(W, bits=bits)
                    e = dict(
                        layer=layer,
                        proj=proj,
                        bits=bits,
                        outliers=eq.outlier_fraction,
                        seconds=eq.seconds,
                        rtn=rel_error(W, quantease.rtn(W, bits=bits, sym=True).weight),
                        rtn_mse=rel_error(W, quantease.rtn(W, bits=bits, sym=True, mse=True).weight),
                        start=rel_error(W, rebuild(W, eq, eq.info["start_scales"])),
                        adam=rel_error(W, rebuild(W, eq, eq.info["adam_scales"])),
                        eq=rel_error(W, eq.weight),
                    )
                    rows_out.append(e)
                    print(
                        f"| {layer}.{proj} | {bits} | {e['outliers']:.2%} | {e['rtn']:.5f} | {e['rtn_mse']:.5f} | "
                        f"{e['start']:.5f} | {e['adam']:.5f} | {e['eq']:.5f} | {e['seconds']:.3f} |"
                    )
        report["real"]["errors"] = rows_out


def layer_loss_vs_gptq(quick: bool, report):
    import problems

    rows, cols = (256, 512) if quick else (1024, 2048)
    p = problems.llm_like(rows, cols, seed=3)
    print(f"\n## Layer loss with an H (tests/problems.llm_like {rows} x {cols}, per-channel, sym)\n")
    print("| bits | RTN sym | EQ | EQ (sigma=None) | GPTQ sym act-order |\n|---:|---:|---:|---:|---:|")
    out = []
    for bits in (3, 4):
        r = quantease.layer_loss(p.W, quantease.rtn(p.W, bits=bits, sym=True).weight, p.H)
        e = quantease.easyquant(p.W, bits=bits, H=p.H).loss
        e_no = quantease.easyquant(p.W, bits=bits, outlier_sigma=None, H=p.H).loss
        g = quantease.gptq(p.W, p.H, bits=bits, sym=True, act_order=True).loss
        out.append(dict(bits=bits, rtn=r, easyquant=e, easyquant_no_outliers=e_no, gptq=g))
        print(f"| {bits} | {r:.4g} | {e:.4g} | {e_no:.4g} | {g:.4g} |")
    report["layer_loss"] = out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, one repetition (seconds, for CI)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions of the default call (default 3)")
    ap.add_argument("--no-peers", action="store_true", help="skip HQQ / bitsandbytes even when installed")
    ap.add_argument("--no-real", action="store_true", help="skip the real-weight section")
    ap.add_argument("--json", type=str, default=None, help="also write every figure to this JSON file")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    shapes = [(512, 512), (512, 1408)] if args.quick else [(4096, 4096), (4096, 11008)]
    report = dict(
        machine=dict(
            platform=platform.platform(),
            processor=platform.processor(),
            cpus=os.cpu_count(),
            omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
            load_average=os.getloadavg(),
        ),
        quantease=quantease.__version__,
        quick=args.quick,
        synthetic=[],
    )
    print(
        f"# EasyQuant bench (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average "
        f"{os.getloadavg()[0]:.2f} at start)"
    )
    speed_and_quality(shapes, reps, not args.no_peers, report)
    if not args.no_real:
        real_weights(args.quick, report)
    layer_loss_vs_gptq(args.quick, report)
    report["machine"]["load_average_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
