"""Layer loss on llama.cpp's k-quants: our GPTQ / QuantEase on the exact GGUF grids against llama.cpp's own
quantizer of the same W, on 4096-wide synthetic LLM-like layers and SmolLM2-135M's down_proj layers (the only
ones whose rows split into 256-blocks).

The anchor is llama.cpp's file: W is written as an F32 GGUF, ``llama-quantize --pure`` quantizes it to the
type with an importance matrix (llama-imatrix's file holding the mean of x^2 per input column, diag(H)/2 for
H = (2/n) XᵀX) and without one, and the tensor is read back with the ``gguf`` package. Every loss is
tr((W - Ŵ) H (W - Ŵ)ᵀ) with the full H; each solver's is divided by the lower of llama.cpp's two losses (the
``best`` column says which). The ``rewrite`` column checks that ``quantease.rtn(W, gguf=T,
imatrix=np.diag(H))`` (our rewrite of ggml-quants.c) has the file's bytes.
Targets (issue 14): gptq(gguf="Q4_K") <= 0.8x, quantease(gguf="Q3_K", init="gptq") <= 0.7x.

Needs llama.cpp's tools (scripts/build_llama_cpp.sh: built on the first call, cached after).

    python bench/bench_gguf_layers.py              # 1024 x 4096 synthetic (4 seeds) + SmolLM2 down_proj
    python bench/bench_gguf_layers.py --quick      # 128 x 1024 synthetic only (seconds)
    python bench/bench_gguf_layers.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_cpp  # noqa: E402
from synthetic import llm_like_problem  # noqa: E402

import quantease  # noqa: E402

#: (label, solver, options); every loss is divided by llama.cpp's best loss of the same type.
CONFIGS = [
    ("gptq", "gptq", dict()),
    ("gptq act-order", "gptq", dict(act_order=True)),
    ("quantease init gptq", "quantease", dict(init="gptq")),
]
TYPES = ("Q4_K", "Q3_K")
TARGETS = {("Q4_K", "gptq"): 0.8, ("Q3_K", "quantease init gptq"): 0.7}


def problems(quick: bool, real: bool, rows: int, seeds: int):
    if quick:
        yield from ((f"synthetic 128x1024 seed {s}", *llm_like_problem(128, 1024, seed=s)) for s in range(2))
        return
    yield from ((f"synthetic {rows}x4096 seed {s}", *llm_like_problem(rows, 4096, seed=s)) for s in range(seeds))
    if real:
        from real_layers import load_layer_set

        for L in load_layer_set("smollm2", blocks=(0, 15, 29), n_samples=16, seq_len=512):
            if L.kind == "mlp.down_proj":
                yield f"smollm2 {L.name}", L.W, L.H


def solve(method: str, W, H, gguf: str, options: dict):
    return getattr(quantease, method)(W, H, gguf=gguf, **options)


def llama_cpp_losses(W, H, t: str, work: Path, bin_dir: Path, threads: int) -> dict:
    """llama-quantize's file of W with and without the importance matrix: losses, and whether our rewrite of
    its imatrix search has the file's bytes."""
    import gguf

    losses = {}
    for label, importance in (("imatrix", np.diag(H) / 2), ("plain", None)):
        raw = llama_cpp.quantize_matrix(W, t, work, imatrix=importance, bin_dir=bin_dir, threads=threads)
        W_llama = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[t])
        losses[label] = quantease.layer_loss(W, W_llama, H)
        if label == "imatrix":
            rewrite = quantease.gguf.pack(quantease.rtn(W, gguf=t, imatrix=np.diag(H)))
            losses["rewrite_equals_file"] = bool(np.array_equal(rewrite, raw))
    return losses


def run(layer_problems, bin_dir: Path, threads: int = 2, log=print) -> list:
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, W, H in layer_problems:
            for t in TYPES:
                llama = llama_cpp_losses(W, H, t, Path(tmp), bin_dir, threads)
                best = "imatrix" if llama["imatrix"] <= llama["plain"] else "plain"
                rec = dict(
                    layer=name,
                    shape=list(W.shape),
                    type=t,
                    llama_imatrix_loss=llama["imatrix"],
                    llama_plain_loss=llama["plain"],
                    best=best,
                    rewrite_equals_file=llama["rewrite_equals_file"],
                    loss={},
                    ratio={},
                )
                for label, method, options in CONFIGS:
                    rec["loss"][label] = quantease.layer_loss(W, solve(method, W, H, t, options).weight, H)
                    rec["ratio"][label] = rec["loss"][label] / llama[best]
                records.append(rec)
                log(f"  {name} {t}: llama.cpp {best} " + ", ".join(f"{k} {v:.3f}" for k, v in rec["ratio"].items()))
    return records


def table(records) -> str:
    labels = [label for label, _, _ in CONFIGS]
    lines = [
        "| layer | type | llama.cpp imatrix loss | llama.cpp plain loss | best | rewrite = file | "
        + " | ".join(labels)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(labels),
    ]
    for rec in records:
        lines.append(
            f"| {rec['layer']} | {rec['type']} | {rec['llama_imatrix_loss']:.4g} | {rec['llama_plain_loss']:.4g} | "
            f"{rec['best']} | {'yes' if rec['rewrite_equals_file'] else 'NO'} | "
            + " | ".join(f"{rec['ratio'][k]:.3f}" for k in labels)
            + " |"
        )
    lines.append("")
    for (t, label), target in TARGETS.items():
        worst = max(rec["ratio"][label] for rec in records if rec["type"] == t)
        lines.append(
            f"{label} on {t}: worst ratio {worst:.3f} vs target <= {target} {'PASS' if worst <= target else 'MISS'}"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small synthetic layers only (seconds)")
    ap.add_argument("--no-real", action="store_true", help="skip SmolLM2's down_proj layers")
    ap.add_argument("--rows", type=int, default=1024, help="rows of the 4096-wide synthetic layers")
    ap.add_argument("--seeds", type=int, default=4, help="synthetic layers")
    ap.add_argument("--threads", type=int, default=2, help="llama-quantize's threads")
    ap.add_argument("--json", help="write the records to this file")
    args = ap.parse_args(argv)
    bin_dir = llama_cpp.tools_dir()
    records = run(problems(args.quick, not args.no_real, args.rows, args.seeds), bin_dir, args.threads)
    print(
        "\nLayer loss relative to llama.cpp's best file (llama-quantize --pure, with or without the imatrix;"
        " lower is better)\n"
    )
    print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
