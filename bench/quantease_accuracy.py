"""QuantEase's loss against GPTQ act-order, layer by layer: how often it is below, and the median ratio.

    python bench/quantease_accuracy.py                 # the real sets of bench/suite.py (33 layers), 3 and 4 bits
    python bench/quantease_accuracy.py --synthetic     # bench/synthetic.py LLM-like problems only (no model)
    python bench/quantease_accuracy.py --json out.json
    python bench/quantease_accuracy.py --configs leanquant "quantease init leanquant"   # a subset (+ gptq act)

Per layer and bits every configuration below runs on the same W and H; the table gives, per configuration
and reference, the share of layers where the configuration's loss is strictly lower and the median, min and
max of loss / reference loss. Losses are the exact float64 ``tr((W − Ŵ) H (W − Ŵ)ᵀ)`` on the undamped H.
Real sets: bench/real_layers.py (SmolLM2-135M blocks 0, 15, 29 with 16 x 512 tokens; all-MiniLM-L6-v2
blocks 0 and 5 with 256 sentences), cached under $QUANTEASE_CACHE/bench-hessians (collected on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quantease  # noqa: E402

#: label -> (solver, kwargs); "gptq act" is the reference of every ratio unless a row names another.
CONFIGS = {
    "gptq act": ("gptq", dict(act_order=True)),
    "gptq": ("gptq", dict(act_order=False)),
    "gptq act mse": ("gptq", dict(act_order=True, mse=True)),
    "quantease": ("quantease", dict()),
    "quantease refit5": ("quantease", dict(refit=5)),
    "quantease init gptq": ("quantease", dict(init="gptq")),
    "quantease init gptq refit5": ("quantease", dict(init="gptq", refit=5)),
    "quantease mse": ("quantease", dict(mse=True)),
    "quantease init gptq mse refit5": ("quantease", dict(init="gptq", mse=True, refit=5)),
    # LeanQuant's non-uniform codebooks (exponent 4, damp 0.1), and CD from its result on them
    "leanquant": ("leanquant", dict()),
    "quantease init leanquant": ("quantease", dict(init="leanquant")),
    "quantease init leanquant refit5": ("quantease", dict(init="leanquant", refit=5)),
}
#: (configuration, reference) pairs of the table
ROWS = [(c, "gptq act") for c in CONFIGS if c != "gptq act"] + [
    ("quantease", "gptq"),
    ("quantease mse", "gptq act mse"),
    ("quantease init gptq mse refit5", "gptq act mse"),
    ("quantease init leanquant", "leanquant"),
    ("quantease init leanquant refit5", "leanquant"),
]


def layer_problems(synthetic: bool):
    """[(name, W, H)]: the real sets, or bench/synthetic.py's LLM-like problems."""
    if synthetic:
        from synthetic import llm_like_problem

        return [(f"synthetic 512x512 seed {s}", *llm_like_problem(512, 512, seed=s)) for s in range(4)]
    from real_layers import load_layer_set

    out = []
    for name, spec in (
        ("smollm2", dict(blocks=(0, 15, 29), n_samples=16, seq_len=512)),
        ("minilm", dict(blocks=(0, 5), n_samples=256, seq_len=128)),
    ):
        out += [(f"{name}:{L.name}", L.W, L.H) for L in load_layer_set(name, **spec)]
    return out


def run(problems, bits=(3, 4), configs=CONFIGS, log=print) -> list:
    """One record per (layer, bits): the loss and seconds of every configuration."""
    records = []
    for name, W, H in problems:
        for b in bits:
            rec = dict(layer=name, shape=list(W.shape), bits=b, loss={}, seconds={})
            for label, (solver, kw) in configs.items():
                res = getattr(quantease, solver)(W, H, bits=b, **kw)
                rec["loss"][label] = float(res.loss)
                rec["seconds"][label] = float(res.seconds)
            records.append(rec)
            log(
                f"  {name} {W.shape[0]}x{W.shape[1]} {b}-bit: "
                + ", ".join(f"{c} {rec['loss'][c] / rec['loss']['gptq act']:.3f}" for c in configs if c != "gptq act")
            )
    return records


def summary(records, rows=ROWS) -> list:
    out = []
    for b in sorted({r["bits"] for r in records}):
        rs = [r for r in records if r["bits"] == b]
        for c, ref in rows:
            if c not in rs[0]["loss"] or ref not in rs[0]["loss"]:
                continue
            x = np.array([r["loss"][c] / r["loss"][ref] for r in rs])
            out.append(
                dict(
                    bits=b,
                    config=c,
                    reference=ref,
                    layers=len(rs),
                    below=float(np.mean(x < 1)),
                    median=float(np.median(x)),
                    min=float(x.min()),
                    max=float(x.max()),
                )
            )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="bench/synthetic.py problems instead of real layers")
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--json", default=None, help="write the records and the summary here")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=None,
        choices=list(CONFIGS),
        help="run only these configurations (gptq act, the reference, always runs)",
    )
    args = ap.parse_args(argv)
    configs = (
        CONFIGS if args.configs is None else {c: CONFIGS[c] for c in CONFIGS if c == "gptq act" or c in args.configs}
    )
    t0 = time.perf_counter()
    records = run(layer_problems(args.synthetic), bits=tuple(args.bits), configs=configs)
    rows = summary(records)
    print(f"\n{'bits':>4}  {'configuration':32s} {'vs':14s} {'below':>6} {'median':>7} {'min':>6} {'max':>6}")
    for r in rows:
        print(
            f"{r['bits']:>4}  {r['config']:32s} {r['reference']:14s} {100 * r['below']:5.0f}% {r['median']:7.3f} "
            f"{r['min']:6.3f} {r['max']:6.3f}"
        )
    print(f"({len(records)} layer x bits runs in {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(records=records, summary=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
