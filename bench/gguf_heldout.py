"""Held-out layer loss of GGUF files of SmolLM2-135M: does a file's advantage on the calibration H survive on
other text? (issue 14: why our GPTQ Q4_0 file had a higher llama-perplexity than llama.cpp's imatrix Q4_0.)

For every quantized matrix of two files made from the same F32 file (e.g. llama.cpp's imatrix Q4_0 and ours),
read back with the ``gguf`` package: the loss tr((W - Ŵ) H (W - Ŵ)ᵀ) against the F32 file's W, with H of
the float model's inputs on the calibration text (the first ``--train`` x 512 tokens of wiki/train, as
bench_gguf.py uses) and on held-out text (the first ``--test`` x 512 tokens of wiki/test). Prints the ratio
second / first per layer kind (median), on both H. With ``--ridge``, also layer by layer on ffn_down:
``gptq(W, H_train ridged, gguf=type)`` for each ridge (quantize_model's hessian_ridge: a number or "auto")
against llama.cpp's imatrix RTN (``quantease.rtn(W, gguf=type, imatrix=diag(H_train))``), on both H.

    python bench/gguf_heldout.py --work w --files llama.cpp-imatrix-Q4_0.gguf,gptq-Q4_0.gguf --ridge 0,auto

Prints, never asserts; layer losses only (no timings).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import quantease
from quantease import models, text
from quantease.pipeline import ridge_strength, with_ridge

KINDS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hessians(model, tok, split: str, windows: int) -> tuple:
    """H of every block linear layer of the float model on the first ``windows`` x 512 tokens of wiki/split."""
    import torch

    from quantease.hooks import HessianCollector

    layers = {
        f"model.layers.{i}.{kind}": model.get_submodule(f"model.layers.{i}.{kind}")
        for i in range(len(model.model.layers))
        for kind in KINDS.values()
    }
    batches = text.eval_windows(tok, text.load_text("wiki", split), seq_len=512, max_windows=windows)
    with HessianCollector(layers) as collector, torch.no_grad():
        for window in batches:
            model(window[None])
    return {name: collector.hessian(name) for name in layers}, len(batches) * 512


def dequantized(path: Path) -> dict:
    import gguf

    return {
        t.name: (t.tensor_type.name, gguf.quants.dequantize(np.asarray(t.data), t.tensor_type))
        for t in gguf.GGUFReader(str(path)).tensors
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder holding f32.gguf and the files")
    parser.add_argument("--files", required=True, help="two file names in --work: anchor,ours")
    parser.add_argument("--train", type=int, default=16, help="calibration windows of 512 (wiki/train)")
    parser.add_argument("--test", type=int, default=24, help="held-out windows of 512 (wiki/test)")
    parser.add_argument("--ridge", default=None, help="comma-separated hessian_ridge values for ffn_down")
    args = parser.parse_args(argv)
    work = Path(args.work)
    first, second = args.files.split(",")
    model, tok = models.load_causal_lm("smollm2-135m")
    H_train, tokens = hessians(model, tok, "train", args.train)
    H_test, _ = hessians(model, tok, "test", args.test)
    f32, a, b = (dequantized(work / name) for name in ("f32.gguf", first, second))
    print(f"loss of {second} / loss of {first}; H from {args.train} x 512 wiki/train, {args.test} x 512 wiki/test")
    print("| kind | layers | calibration H (median) | held-out H (median) | held-out H (max) |\n|---|---|---|---|---|")
    ridges = [] if args.ridge is None else args.ridge.split(",")
    layer_rows = []
    for short, kind in KINDS.items():
        ratios = []
        for i in range(len(model.model.layers)):
            name, hf = f"blk.{i}.{short}.weight", f"model.layers.{i}.{kind}"
            W = np.ascontiguousarray(f32[name][1], dtype=np.float32)
            pair = []
            for H in (H_train[hf], H_test[hf]):
                anchor = float(quantease.layer_loss(W, a[name][1], H))
                pair.append(float(quantease.layer_loss(W, b[name][1], H)) / anchor if anchor > 0 else np.nan)
            if not np.isnan(pair[0]):  # both lossless (e.g. a Q4_1 fallback on weights already on its grid)
                ratios.append(pair)
            if short == "ffn_down" and ridges and a[name][0] == b[name][0]:
                layer_rows.append((i, a[name][0], W, hf))
        r = np.array(ratios)
        print(f"| {short} | {len(r)} | {np.median(r[:, 0]):.3f} | {np.median(r[:, 1]):.3f} | {r[:, 1].max():.3f} |")
    if not layer_rows:
        return
    print("\nffn_down, gptq on the ridged calibration H / llama.cpp's imatrix RTN (calibration H | held-out H)")
    header = " | ".join(f"ridge {r}: calib | held-out" for r in ridges)
    print(f"| layer | type | {header} |\n|---|---|" + "---|---|" * len(ridges))
    for i, ggml_type, W, hf in layer_rows:
        Htr, Hte = H_train[hf], H_test[hf]
        ref = quantease.rtn(W, gguf=ggml_type, imatrix=np.diag(Htr)).weight
        base = (quantease.layer_loss(W, ref, Htr), quantease.layer_loss(W, ref, Hte))
        if base[0] <= 0:
            continue
        cells = []
        for ridge in ridges:
            strength = ridge_strength(ridge if ridge == "auto" else float(ridge), W.shape[1], tokens)
            H = with_ridge(Htr, strength) if strength > 0 else Htr
            ours = quantease.gptq(W, H, gguf=ggml_type).weight
            on_train, on_test = quantease.layer_loss(W, ours, Htr), quantease.layer_loss(W, ours, Hte)
            cells.append(f"{on_train / base[0]:.3f} | {on_test / base[1]:.3f}")
        print(f"| {i} | {ggml_type} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
