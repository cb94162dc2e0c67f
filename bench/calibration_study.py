"""How much calibration the main job needs, and whether a solver overfits it (SmolLM2-135M, wiki).

    python bench/calibration_study.py layers [--json out.json]     # layer level: minutes
    python bench/calibration_study.py model  [--json out.json]     # whole model, perplexity: hours on 2 cores

``layers``: Hessians of the unquantized model's layers (blocks 0, 10, 20, 29; every kind) from 2k / 8k / 32k
calibration tokens (4 / 16 / 64 random windows of 512 tokens of the wiki *train* split, nested: the first 4
windows of the 16, ...; two window seeds) and from 32k *held-out* tokens (the first 64 windows of the wiki
*test* split). Every solver runs on each calibration Hessian; its loss is reported on that Hessian
("calibration") and on the held-out one ("held-out"), both relative to tr(W H Wᵀ) of the same Hessian. A
solver that lowers the calibration loss but not the held-out one fits the calibration sample, not the
layer: the gap between the two columns shrinks as calibration grows.

``model``: the whole pipeline (quantease.torch.quantize_model, every block, true-sequential) per method,
calibration size and seed, then perplexity on the held-out windows with its standard error over windows,
the relative layer loss on the calibration Hessians (the pipeline's record) and on held-out tokens
(quantease.eval.lm_quality: Hessians of the evaluation text through the same quantized prefix).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import quantease  # noqa: E402

LM_NAME = "smollm2-135m"
WINDOW = 512
TOKEN_STEPS = (4, 16, 64)  # calibration windows of WINDOW tokens: 2k, 8k, 32k tokens
LAYER_BLOCKS = (0, 10, 20, 29)


def _damped(H: np.ndarray, damp: float) -> np.ndarray:
    if damp == 0:
        return H
    out = H.copy()
    out[np.diag_indices_from(out)] += damp * float(np.mean(np.diag(H)))
    return out


# name -> f(W, H, bits, group) -> dequantized weight. GPTQ act-order is the reference every ratio is taken to.
LAYER_SOLVERS: Dict[str, Callable[..., np.ndarray]] = {
    "rtn": lambda W, H, b, g: quantease.rtn(W, bits=b, group_size=g).weight,
    "gptq": lambda W, H, b, g: quantease.gptq(W, H, bits=b, group_size=g, act_order=True).weight,
    "gptq damp=0.1": lambda W, H, b, g: quantease.gptq(W, H, bits=b, group_size=g, act_order=True, damp=0.1).weight,
    "quantease (paper: 30 sweeps from W)": lambda W, H, b, g: quantease.quantease(W, H, bits=b, group_size=g).weight,
    "quantease init=gptq": lambda W, H, b, g: quantease.quantease(W, H, bits=b, group_size=g, init="gptq").weight,
    "quantease init=gptq refit=5": lambda W, H, b, g: (
        quantease.quantease(W, H, bits=b, group_size=g, init="gptq", refit=5).weight
    ),
    "quantease init=gptq on H+0.01": lambda W, H, b, g: (
        quantease.quantease(W, _damped(H, 0.01), bits=b, group_size=g, init="gptq").weight
    ),
    "quantease init=gptq on H+0.03": lambda W, H, b, g: (
        quantease.quantease(W, _damped(H, 0.03), bits=b, group_size=g, init="gptq").weight
    ),
    "quantease init=gptq on H+0.1": lambda W, H, b, g: (
        quantease.quantease(W, _damped(H, 0.1), bits=b, group_size=g, init="gptq").weight
    ),
    "quantease init=gptq iters=3": lambda W, H, b, g: (
        quantease.quantease(W, H, bits=b, group_size=g, init="gptq", iters=3).weight
    ),
    "quantease init=gptq iters=10": lambda W, H, b, g: (
        quantease.quantease(W, H, bits=b, group_size=g, init="gptq", iters=10).weight
    ),
    "quantease init=gptq on H+0.01 refit=5": lambda W, H, b, g: (
        quantease.quantease(W, _damped(H, 0.01), bits=b, group_size=g, init="gptq", refit=5).weight
    ),
    "leanquant": lambda W, H, b, g: quantease.leanquant(W, H, bits=b, group_size=g).weight,
}


def _rel_loss(W: np.ndarray, W_hat: np.ndarray, H: np.ndarray) -> float:
    energy = float(quantease.layer_loss(W, np.zeros_like(W), H))
    return float(quantease.layer_loss(W, W_hat, H)) / energy


def _layer_hessians(
    model, names: Sequence[str], batches: Sequence[Any], snapshots: Sequence[int], log
) -> Dict[int, Dict[str, np.ndarray]]:
    """{n_windows: {layer name: H (float32)}} after the first n windows of ``batches`` (one window each), for
    n in ``snapshots``; layers sharing an input share the array."""
    import torch

    from quantease.torch import HessianCollector, linear_layers

    layers = linear_layers(model)
    chosen = {n: layers[n] for n in names}
    # q/k/v and gate/up read the same tensor: one accumulator each (HessianCollector's ``shared``).
    shared: Dict[str, List[str]] = {}
    for n in names:
        prefix, kind = n.rsplit(".", 1)
        key = prefix + (
            ".qkv"
            if kind in ("q_proj", "k_proj", "v_proj")
            else ".gate_up"
            if kind in ("gate_proj", "up_proj")
            else "." + kind
        )
        shared.setdefault(key, []).append(n)
    out: Dict[int, Dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    with HessianCollector(chosen, shared=list(shared.values())) as col, torch.no_grad():
        for j, batch in enumerate(batches):
            model.model(input_ids=batch)  # the decoder stack only: the LM head is not needed
            if j + 1 in snapshots:
                hs: Dict[str, np.ndarray] = {}
                for group in shared.values():
                    H = col.hessian(group[0]).astype(np.float32)
                    hs.update({n: H for n in group})
                out[j + 1] = hs
                log(
                    f"    {(j + 1) * batch.shape[1]:,} tokens: Hessians of {len(names)} layers "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
    return out


def _cached(
    args: argparse.Namespace, key: tuple, compute: Callable[[], Dict[int, Dict[str, np.ndarray]]]
) -> Dict[int, Dict[str, np.ndarray]]:
    """``compute()`` ({snapshot: {layer: H}}), kept in ``--hessian-cache`` (a directory) when one is given."""
    if not args.hessian_cache:
        return compute()
    import hashlib

    path = os.path.join(args.hessian_cache, hashlib.sha256(repr(key).encode()).hexdigest()[:16] + ".npz")
    if os.path.exists(path):
        with np.load(path) as z:
            out: Dict[int, Dict[str, np.ndarray]] = {}
            for k in z.files:
                snap, name = k.split("|", 1)
                out.setdefault(int(snap), {})[name] = z[k]
            return out
    out = compute()
    os.makedirs(args.hessian_cache, exist_ok=True)
    np.savez(path + ".tmp.npz", **{f"{snap}|{name}": H for snap, hs in out.items() for name, H in hs.items()})
    os.replace(path + ".tmp.npz", path)
    return out


def run_layers(args: argparse.Namespace, log=print) -> Dict[str, Any]:
    from quantease import models, text
    from quantease.torch import linear_layers

    model, tokenizer = models.load_causal_lm(LM_NAME)
    train_ids = text.tokenize(tokenizer, text.load_text("wiki", "train"))
    test_ids = text.tokenize(tokenizer, text.load_text("wiki", "test"))
    names = [n for n in linear_layers(model, skip=("lm_head",)) if int(n.split(".")[2]) in args.blocks]
    weights = {n: m.weight.detach().numpy().astype(np.float32) for n, m in linear_layers(model).items() if n in names}
    log(
        f"layers: {len(names)} of SmolLM2 (blocks {', '.join(map(str, args.blocks))}), {args.bits}-bit "
        f"g{args.group}; held-out: first {args.heldout_windows} x {WINDOW} wiki test tokens"
    )
    heldout_batches = list(text.eval_windows(test_ids, seq_len=WINDOW, max_windows=args.heldout_windows)[:, None])
    n_heldout = len(heldout_batches)
    heldout = _cached(
        args,
        ("heldout", n_heldout, tuple(names)),
        lambda: {n_heldout: _layer_hessians(model, names, heldout_batches, (n_heldout,), log)[n_heldout]},
    )[n_heldout]
    rows: List[Dict[str, Any]] = []
    for seed in args.seeds:
        calib = text.calibration_batches(train_ids, None, n_samples=max(args.steps), seq_len=WINDOW, seed=seed)
        log(f"  calibration seed {seed}")
        snaps = _cached(
            args,
            ("calibration", seed, tuple(args.steps), tuple(names)),
            lambda: _layer_hessians(model, names, calib, args.steps, log),
        )
        for n_windows, hs in snaps.items():
            for name in names:
                W, H, Hh = weights[name], hs[name], heldout[name]
                for method in args.methods:
                    W_hat = LAYER_SOLVERS[method](W, H, args.bits, args.group)
                    rows.append(
                        dict(
                            seed=seed,
                            tokens=n_windows * WINDOW,
                            layer=name,
                            method=method,
                            calib=_rel_loss(W, W_hat, H),
                            heldout=_rel_loss(W, W_hat, Hh),
                        )
                    )
            log(f"    solved {len(names)} layers x {len(args.methods)} methods at {n_windows * WINDOW:,} tokens")
    return {"rows": rows, "summary": summarize_layers(rows)}


def summarize_layers(rows: Sequence[Dict[str, Any]], reference: str = "gptq") -> List[Dict[str, Any]]:
    """Per (tokens, method): mean relative loss on calibration and held-out Hessians, and the median over
    layers and seeds of the loss ratio to ``reference`` on each."""
    ref = {(r["seed"], r["tokens"], r["layer"]): r for r in rows if r["method"] == reference}
    out = []
    for tokens in sorted({r["tokens"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["tokens"] == tokens and r["method"] == method]
            if not mine:
                continue
            pairs = [(r, ref[(r["seed"], tokens, r["layer"])]) for r in mine]
            out.append(
                dict(
                    tokens=tokens,
                    method=method,
                    calib=float(np.mean([r["calib"] for r in mine])),
                    heldout=float(np.mean([r["heldout"] for r in mine])),
                    calib_ratio=float(np.median([a["calib"] / b["calib"] for a, b in pairs])),
                    heldout_ratio=float(np.median([a["heldout"] / b["heldout"] for a, b in pairs])),
                    heldout_below=float(np.mean([a["heldout"] < b["heldout"] for a, b in pairs])),
                )
            )
    return out


def layers_table(summary: Sequence[Dict[str, Any]], reference: str = "gptq") -> str:
    lines = [
        f"| calibration tokens | method | rel. loss (calibration) | rel. loss (held-out) | ratio to {reference} "
        f"(calibration) | ratio to {reference} (held-out) | layers below {reference} (held-out) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['tokens']:,} | {s['method']} | {s['calib']:.4f} | {s['heldout']:.4f} | "
            f"{s['calib_ratio']:.3f} | {s['heldout_ratio']:.3f} | {s['heldout_below']:.0%} |"
        )
    return "\n".join(lines)


# name -> (registry entry of quantease.solvers, extra solver options)
MODEL_METHODS: Dict[str, tuple] = {
    "rtn": ("rtn", {}),
    "gptq": ("gptq", {"act_order": True}),
    "quantease init=gptq": ("quantease", {"init": "gptq"}),
    "quantease (paper)": ("quantease-paper", {}),
    "leanquant": ("leanquant", {}),
}


def run_model(args: argparse.Namespace, log=print) -> Dict[str, Any]:
    """Every (tokens, seed, method) through the whole pipeline; rows appended to args.json as they finish."""
    from quantease import eval as qeval
    from quantease import models, text
    from quantease.torch import quantize_model

    model, tokenizer = models.load_causal_lm(LM_NAME)
    train_ids = text.tokenize(tokenizer, text.load_text("wiki", "train"))
    test_ids = text.tokenize(tokenizer, text.load_text("wiki", "test"))
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reference = qeval.reference_weights(model)
    out: Dict[str, Any] = {"rows": []}
    if args.json and os.path.exists(args.json):  # resume: keep what an earlier run measured
        with open(args.json) as f:
            out = json.load(f)
    done = {(r["tokens"], r["seed"], r["method"]) for r in out["rows"]}

    def evaluate(layers: bool = True) -> Dict[str, Any]:
        q = qeval.lm_quality(
            model,
            test_ids,
            seq_len=WINDOW,
            max_windows=args.eval_windows,
            reference=reference if layers else None,
            layer_loss_windows=args.model_heldout_windows,
            progress=False,
        )
        return {
            "perplexity": q.perplexity,
            "se": q.se,
            "window_nll": q.window_nll.tolist(),
            "heldout": q.mean_layer_loss,
            "heldout_layers": q.layer_loss,
        }

    if ("fp", 0, "full precision") not in {(r["tokens"], r["seed"], r["method"]) for r in out["rows"]}:
        out["rows"].append({"tokens": "fp", "seed": 0, "method": "full precision", **evaluate(layers=False)})
    for steps in args.steps:
        for seed in args.seeds:
            calib = text.calibration_batches(train_ids, None, n_samples=steps, seq_len=WINDOW, seed=seed)
            for method in args.methods:
                name, kwargs = MODEL_METHODS[method]
                tokens = 0 if name == "rtn" else steps * WINDOW
                if (tokens, seed if tokens else 0, method) in done:
                    continue
                model.load_state_dict(original)
                t0 = time.perf_counter()
                report = quantize_model(
                    model,
                    calib,
                    method=name,
                    bits=args.bits,
                    group_size=args.group,
                    progress=False,
                    solver_kwargs=kwargs,
                )
                q_s = time.perf_counter() - t0
                rel = [r.relative_loss for r in report if r.relative_loss is not None]
                row = {
                    "tokens": tokens,
                    "seed": seed if tokens else 0,
                    "method": method,
                    "calib": float(np.mean(rel)) if rel else None,
                    "calib_layers": {r.name: r.relative_loss for r in report},
                    "quantize_seconds": q_s,
                    "phase_seconds": report.phase_seconds,
                    **evaluate(),
                }
                out["rows"].append(row)
                done.add((tokens, row["seed"], method))
                log(
                    f"  {tokens:>6} tokens seed {seed} {method}: ppl {row['perplexity']:.2f} +- {row['se']:.2f}, "
                    f"rel. layer loss calib {row['calib'] if row['calib'] is None else round(row['calib'], 5)} "
                    f"held-out {row['heldout']:.5f}, quantize {q_s:.0f} s",
                )
                if args.json:
                    with open(args.json + ".tmp", "w") as f:
                        json.dump(out, f)
                    os.replace(args.json + ".tmp", args.json)
    model.load_state_dict(original)
    return out


def model_table(rows: Sequence[Dict[str, Any]], reference: str = "gptq") -> str:
    """Per (tokens, method): perplexity mean over seeds (± window s.e., seed spread), the paired log-ratio to
    ``reference`` on the same windows, calibration and held-out relative layer loss."""
    lines = [
        f"| calibration tokens | method | seeds | perplexity (± s.e. over windows) | seed spread (min-max) | "
        f"vs {reference}: log ratio ± s.e. (mean over seeds) | rel. layer loss (calibration) | "
        "rel. layer loss (held-out) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keyed: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        keyed.setdefault((r["tokens"], r["method"]), []).append(r)
    for (tokens, method), rs in sorted(keyed.items(), key=lambda kv: (str(kv[0][0]).zfill(8), kv[0][1])):
        ppl = [r["perplexity"] for r in rs]
        se = float(np.mean([r["se"] for r in rs]))
        diffs = []
        for r in rs:
            ref = next(
                (x for x in rows if x["method"] == reference and x["tokens"] == tokens and x["seed"] == r["seed"]), None
            )
            if ref is not None:
                d = np.asarray(r["window_nll"]) - np.asarray(ref["window_nll"])
                diffs.append((float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))))
        vs = (
            "-"
            if not diffs
            else (
                f"{np.mean([d for d, _ in diffs]):+.4f} ± "
                f"{np.sqrt(np.mean([s * s for _, s in diffs]) / len(diffs)):.4f}"
            )
        )
        calib = [r["calib"] for r in rs if r.get("calib") is not None]
        lines.append(
            f"| {tokens} | {method} | {len(rs)} | {np.mean(ppl):.2f} ± {se:.2f} | "
            f"{min(ppl):.2f}-{max(ppl):.2f} | {vs} | "
            f"{np.mean(calib):.5f} | "
            if calib
            else f"| {tokens} | {method} | {len(rs)} | {np.mean(ppl):.2f} ± {se:.2f} | "
            f"{min(ppl):.2f}-{max(ppl):.2f} | {vs} | - | "
        )
        lines[-1] += f"{np.mean([r['heldout'] for r in rs if r.get('heldout') is not None] or [np.nan]):.5f} |"
    return "\n".join(lines)


def _int_list(value: str) -> List[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("layers", "model"))
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--seeds", type=_int_list, default=[0, 1])
    p.add_argument("--blocks", type=_int_list, default=list(LAYER_BLOCKS))
    p.add_argument(
        "--methods",
        type=lambda v: [m.strip() for m in v.split(";") if m.strip()],
        default=None,
        help="';'-separated (layers: default every one of LAYER_SOLVERS; model: of MODEL_METHODS)",
    )
    p.add_argument("--eval-windows", type=int, default=32, help=f"model: held-out windows of {WINDOW} tokens")
    p.add_argument(
        "--steps", type=_int_list, default=list(TOKEN_STEPS), help=f"calibration sizes in windows of {WINDOW} tokens"
    )
    p.add_argument("--heldout-windows", type=int, default=64)
    p.add_argument(
        "--model-heldout-windows", type=int, default=8, help="model: evaluation windows that measure the held-out loss"
    )
    p.add_argument("--json", default=None)
    p.add_argument("--hessian-cache", default=None, help="layers: a directory that keeps the Hessians for reruns")
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = list(LAYER_SOLVERS) if args.part == "layers" else ["rtn", "gptq", "quantease init=gptq"]
    known = LAYER_SOLVERS if args.part == "layers" else MODEL_METHODS
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(known)}")
    return args


def main(argv: Optional[Sequence[str]] = None, log=print) -> Dict[str, Any]:
    args = parse_args(argv)
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    if args.part == "layers":
        out = run_layers(args, log)
        log("")
        log(layers_table(out["summary"]))
    else:
        out = run_model(args, log)
        log("")
        log(model_table(out["rows"]))
    out["args"] = vars(args)
    out["seconds"] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
