"""GGUF files of SmolLM2-135M: quantease's GPTQ / QuantEase against llama.cpp's own quantizer with an
importance matrix, at the same type and size, measured by llama.cpp itself.

1. Our F32 model as GGUF (``save_gguf`` with the shipped GGUF as template; its time is printed).
2. llama.cpp: ``llama-imatrix`` on the calibration text, then ``llama-quantize --imatrix`` to each type (and
   without the imatrix, for reference).
3. quantease: ``quantize_model(..., method, gguf=type)`` on the same calibration text, ``save_gguf``: GPTQ
   with act-order and QuantEase from it (``--methods``; ``gptq``: without act-order).
4. ``llama-perplexity`` of every file on the same held-out text (chunks of ``--ctx`` tokens, the second half
   of each scored); file sizes (equal by construction: the same tensor types).
5. k-quants, layer by layer: SmolLM2's ``ffn_down`` (the only matrices whose rows split into 256-blocks) from
   llama-quantize's imatrix file forced to Q4_K / Q3_K (``--tensor-type``), read back, against our
   ``gptq(gguf="Q4_K")`` and ``quantease(gguf="Q3_K", init="gptq")`` of the same W; loss tr((W-Ŵ)H(W-Ŵ)ᵀ)
   with H from the calibration inputs of the float model. Targets (issue 14): ≤ 0.8x at Q4_K, ≤ 0.7x at Q3_K.

Prints, never asserts. CPU-heavy (two full quantizations per type and a perplexity per file):

    python bench/bench_gguf.py                       # Q4_0 and IQ4_NL, 128 x 512 calibration tokens
    python bench/bench_gguf.py --quick               # Q4_0 only, small calibration and evaluation (a check)
    python bench/bench_gguf.py --json out.json
    python bench/bench_gguf.py --work w --types Q4_0 --layers 0 &     # one process per type, sharing
    python bench/bench_gguf.py --work w --types IQ4_NL --reuse        # the F32 file and the imatrix in w
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_cpp  # noqa: E402

import quantease  # noqa: E402
from quantease import models, text  # noqa: E402
from quantease.export import save_gguf  # noqa: E402
from quantease.pipeline import quantize_model  # noqa: E402

# Our files: label -> (quantize_model's method, its solver_kwargs); --methods picks labels. GPTQ with
# act-order, as the main job's (bench/real_model.py) and as QuantEase's start: without it (gptq's default) our
# Q4_0 file lost to llama.cpp's, with it won (bench/README "bench_gguf.py").
METHODS = {
    "gptq-act-order": ("gptq", {"act_order": True}),
    "quantease": ("quantease", {"init": "gptq"}),
    "gptq": ("gptq", {}),
}
DEFAULT_METHODS = "gptq-act-order,quantease"


def mib(path: Path) -> float:
    return os.path.getsize(path) / 2**20


def our_file(out: Path, label: str, ggml_type: str, calib, ridge) -> dict:
    """Our ``label`` (METHODS) file of ``ggml_type``: quantize_model on the calibration batches, save_gguf to ``out``
    (metadata and tokenizer from the shipped GGUF); returns both steps' seconds."""
    model, _ = models.load_causal_lm("smollm2-135m")
    method, kwargs = METHODS[label]
    t0 = time.perf_counter()
    report = quantize_model(
        model,
        calib,
        method=method,
        gguf=ggml_type,
        progress=False,
        solver_kwargs=kwargs,
        hessian_ridge=ridge,
    )
    t1 = time.perf_counter()
    save_gguf(model, out, report, template=models.source_gguf("smollm2-135m"))
    return {"quantize_seconds": t1 - t0, "save_gguf_seconds": time.perf_counter() - t1}


def down_proj_hessians(model, calib):
    """H of every down_proj of the float model on the calibration batches (one forward pass)."""
    import torch

    from quantease.torch import HessianCollector

    layers = {f"model.layers.{i}.mlp.down_proj": block.mlp.down_proj for i, block in enumerate(model.model.layers)}
    with HessianCollector(layers) as collector, torch.no_grad():
        for batch in calib:
            model(batch)
    return {name: collector.hessian(name) for name in layers}


def k_quant_layers(work: Path, bin_dir: Path, threads: int, calib, layers: int) -> list:
    """Loss of our k-quant solutions relative to llama.cpp's imatrix quantization, per down_proj layer."""
    import gguf

    model, _ = models.load_causal_lm("smollm2-135m")
    hessians = down_proj_hessians(model, calib)
    rows = []
    for ggml_type, method, kwargs in (("Q4_K", "gptq", {}), ("Q3_K", "quantease", {"init": "gptq"})):
        out = work / f"llama-ffn_down-{ggml_type}.gguf"
        llama_cpp.run(
            "llama-quantize",
            [
                "--imatrix",
                work / "imatrix.gguf",
                "--tensor-type",
                f"ffn_down={ggml_type.lower()}",
                work / "f32.gguf",
                out,
                "Q8_0",
                str(threads),
            ],
            bin_dir=bin_dir,
        )
        theirs = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
        for i in range(layers):
            name = f"model.layers.{i}.mlp.down_proj"
            W = model.model.layers[i].mlp.down_proj.weight.detach().numpy()
            H = hessians[name]
            tensor = theirs[f"blk.{i}.ffn_down.weight"]
            W_llama = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
            loss_llama = float(quantease.layer_loss(W, W_llama, H))
            ours = getattr(quantease, method)(W, H, gguf=ggml_type, **kwargs)
            rows.append(
                {
                    "type": ggml_type,
                    "layer": i,
                    "method": method,
                    "llama_cpp_imatrix": loss_llama,
                    "ours": float(ours.loss),
                    "ratio": float(ours.loss) / loss_llama,
                }
            )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Q4_0 only, 16 x 256 calibration, 8 eval chunks")
    parser.add_argument("--types", default=None, help="comma-separated types (default Q4_0,IQ4_NL)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"our files, of {', '.join(METHODS)}")
    parser.add_argument("--samples", type=int, default=None, help="calibration windows (default 128)")
    parser.add_argument("--seq-len", type=int, default=None, help="calibration window length (default 512)")
    parser.add_argument("--ctx", type=int, default=512, help="llama-perplexity chunk length")
    parser.add_argument("--chunks", type=int, default=-1, help="llama-perplexity chunks (default all)")
    parser.add_argument(
        "--layers", type=int, default=None, help="down_proj layers compared (default all 30; 0: no k-quant layers)"
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the F32 and llama.cpp-without-imatrix perplexities"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the files already in --work (F32, imatrix, llama.cpp's and ours: same calibration and code)",
    )
    parser.add_argument(
        "--hessian-ridge",
        default=None,
        help="quantize_model's hessian_ridge (default: its default, 'auto' for gguf=; 0 for the raw H)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--work", default=None, help="folder for the GGUF files (default a temporary one)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    types = (args.types or ("Q4_0" if args.quick else "Q4_0,IQ4_NL")).split(",")
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)} (choices: {', '.join(METHODS)})")
    samples = args.samples or (16 if args.quick else 128)
    seq_len = args.seq_len or (256 if args.quick else 512)
    chunks = args.chunks if args.chunks > 0 or not args.quick else 8
    n_layers = args.layers if args.layers is not None else (2 if args.quick else 30)
    ridge = None if args.hessian_ridge in (None, "auto") else float(args.hessian_ridge)

    bin_dir = llama_cpp.tools_dir()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_gguf-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    calib_text, held_out = text.load_text("wiki", "train"), text.load_text("wiki", "test")
    (work / "calib.txt").write_text(calib_text)
    (work / "test.txt").write_text(held_out)
    model, tok = models.load_causal_lm("smollm2-135m")
    template = models.source_gguf("smollm2-135m")
    # The same tokens on both sides: llama-imatrix reads the first `samples` chunks of `seq_len` of the file.
    windows = text.eval_windows(tok, calib_text, seq_len=seq_len, max_windows=samples)
    calib = [window[None] for window in windows]
    print(
        f"SmolLM2-135M; calibration: the first {samples} x {seq_len} tokens of wiki/train (the chunks "
        f"llama-imatrix reads); perplexity: wiki/test, ctx {args.ctx}, "
        f"{'all' if chunks < 0 else chunks} chunks; hessian_ridge {'auto' if ridge is None else ridge}; "
        f"llama.cpp from {bin_dir}"
    )

    t0 = time.perf_counter()
    f32_seconds = None
    if not (args.reuse and (work / "f32.gguf").exists()):
        save_gguf(model, work / "f32.gguf", template=template)
        f32_seconds = time.perf_counter() - t0
    if not (args.reuse and (work / "imatrix.gguf").exists()):
        llama_cpp.imatrix(
            work / "f32.gguf",
            work / "calib.txt",
            work / "imatrix.gguf",
            ctx=seq_len,
            chunks=samples,
            bin_dir=bin_dir,
            threads=args.threads,
        )

    def ppl(path: Path) -> dict:
        return llama_cpp.perplexity_stats(
            path, work / "test.txt", ctx=args.ctx, chunks=chunks, bin_dir=bin_dir, threads=args.threads
        )

    rows = []

    def add(row: dict) -> None:
        # Printed as each file is measured: a long run that is stopped still leaves its figures. The paired
        # difference: per-chunk mean NLL of this file minus llama.cpp imatrix's of the same type (same chunks).
        rows.append(row)
        anchor = next((r for r in rows if r["file"] == "llama.cpp imatrix" and r["type"] == row["type"]), None)
        paired = ""
        if anchor is not None and anchor is not row:
            mean, se = llama_cpp.paired_difference(anchor["chunk_nll"], row["chunk_nll"])
            paired = f"{mean:+.4f} ± {se:.4f}"
        se = "" if row["se"] is None else f" ± {row['se']:.3f}"
        print(f"| {row['file']} | {row['type']} | {row['MiB']:.2f} | {row['ppl']:.3f}{se} | {paired} |", flush=True)

    print(
        "\n| file | type | size (MiB) | perplexity ± s.e. | paired NLL difference to llama.cpp imatrix ± s.e. |"
        "\n|---|---|---|---|---|"
    )
    if not args.no_reference:
        add({"file": "F32", "type": "F32", "MiB": mib(work / "f32.gguf"), **ppl(work / "f32.gguf")})
    llama_files = [("llama.cpp imatrix", work / "imatrix.gguf")]
    if not args.no_reference:
        llama_files.insert(0, ("llama.cpp", None))
    save_seconds = {}
    for ggml_type in types:
        for label, imatrix in llama_files:
            out = work / f"{label.replace(' ', '-')}-{ggml_type}.gguf"
            if not (args.reuse and out.exists()):  # llama-quantize is deterministic: same inputs, same file
                llama_cpp.quantize(
                    work / "f32.gguf", out, ggml_type, imatrix_file=imatrix, bin_dir=bin_dir, threads=args.threads
                )
            add({"file": label, "type": ggml_type, "MiB": mib(out), **ppl(out)})
        for method in methods:
            out = work / f"{method}-{ggml_type}.gguf"
            seconds = {}
            if not (args.reuse and out.exists()):
                seconds = our_file(out, method, ggml_type, calib, ridge)
                save_seconds[f"{method}-{ggml_type}"] = seconds["save_gguf_seconds"]
            add({"file": f"quantease {method}", "type": ggml_type, "MiB": mib(out), **ppl(out), **seconds})

    f32_note = "reused" if f32_seconds is None else f"{f32_seconds:.1f} s"
    print(
        f"\nsave_gguf: F32 file {f32_note}; quantized files "
        + ", ".join(f"{k} {v:.1f} s" for k, v in save_seconds.items())
    )

    layer_rows = k_quant_layers(work, bin_dir, args.threads, calib, n_layers) if n_layers > 0 else []
    print("\nk-quants on SmolLM2's ffn_down: our loss / llama.cpp's imatrix quantization's (read from its file)")
    print("| type | ours | layers | median | min | max | target |\n|---|---|---|---|---|---|---|")
    for ggml_type, method, target in (("Q4_K", "gptq", 0.8), ("Q3_K", "quantease init=gptq", 0.7)):
        ratios = np.array([r["ratio"] for r in layer_rows if r["type"] == ggml_type])
        if ratios.size == 0:
            continue
        print(
            f"| {ggml_type} | {method} | {ratios.size} | {np.median(ratios):.3f} | {ratios.min():.3f} | "
            f"{ratios.max():.3f} | {target} |"
        )
    result = {
        "rows": rows,
        "save_gguf_seconds": {"F32": f32_seconds, **save_seconds},
        "k_quant_layers": layer_rows,
        "calibration": [samples, seq_len],
        "hessian_ridge": "auto" if ridge is None else ridge,
        "ctx": args.ctx,
        "chunks": chunks,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
