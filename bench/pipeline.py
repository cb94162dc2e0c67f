"""Throughput of quantize_model: calibration tokens per second and where each block's time goes.

    python bench/pipeline.py                          # SmolLM2-135M and one synthetic 7B-shaped block,
                                                      # 1 process x 2 threads, then 2 ranks x 1 thread
    python bench/pipeline.py --models synthetic --hidden 256 --mlp 704 --samples 2 --seq-len 32   # a smoke run
    python bench/pipeline.py --json out.json
    python bench/pipeline.py --models synthetic --offload      # the block read from / written to safetensors

The last table is a paper estimate, not a measurement: what a 7B and a 70B model would take on N machines of C
cores, scaled from the synthetic block's measured figures (see ``estimate``).

Per block, the split is:

* forward: the block's forward passes (tracing, one collection pass per true-sequential group, the pass that
  makes the next block's inputs), hooks included, Hessian updates excluded;
* hessian: the Hessian updates (HessianAccumulator.add: a float32 rank-k update into the float64 running sum)
  plus, with several ranks, the reduction of the partial sums (send, receive, fold);
* solve: the solver calls (quantease.pipeline._solve_layer: the solver, the loss and the write-back);
* io: checkpoint writing (a run with ``--checkpoint``) and, with ``--offload`` (quantease.offload: the model's
  weights on disk), reading each block from safetensors and writing it out quantized.

"hessian GFLOP/s" counts n x cols^2 flops per update (the symmetric rank-n update of a cols x cols sum, both
triangles as the GEMM computes them) and is printed next to the machine's float32 GEMM rate (NumPy's BLAS on
2048^2): the update should run near it. Rows are printed as they are measured; the timed figures of record come
from a quiet machine (the lead's run). With ``--ranks 2`` the script starts itself under torchrun
(gloo, loopback), each rank with one thread; rank 0 prints the rows of the slowest rank.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Any, Dict, Iterator, List, Optional  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import machine  # noqa: E402  (bench/machine.py)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,synthetic", help="comma list of smollm2, synthetic")
    p.add_argument("--ranks", default="1,2", help="1 (one process x --threads threads) and/or 2 (2 ranks x 1 thread)")
    p.add_argument("--threads", type=int, default=2, help="threads of the one-process configuration")
    p.add_argument("--method", default="gptq")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64, help="64 divides SmolLM2's 576 and 11008")
    p.add_argument("--samples", type=int, default=16, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-blocks", type=int, default=4, help="SmolLM2 blocks quantized (the rest untouched)")
    p.add_argument("--hidden", type=int, default=4096, help="the synthetic block's hidden size")
    p.add_argument("--mlp", type=int, default=11008, help="the synthetic block's MLP size")
    p.add_argument("--checkpoint", action="store_true", help="write checkpoints (the io column)")
    p.add_argument("--offload", action="store_true", help="weights on disk, one block in memory (the io column)")
    p.add_argument("--estimate-tokens", type=int, default=128 * 2048, help="calibration tokens of the estimate")
    p.add_argument("--machines", default="1,2,4,8", help="machine counts N of the estimate")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores C per machine of the estimate")
    p.add_argument("--json", help="write every row and the machine's figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a torchrun rank: the model to run
    p.add_argument("--source", help=argparse.SUPPRESS)  # the ranks' shared directory of the offloaded model
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.ranks = [int(r) for r in args.ranks.split(",") if r]
    args.machines = [int(n) for n in args.machines.split(",") if n]
    for m in args.models:
        if m not in ("smollm2", "synthetic"):
            p.error(f"unknown model {m!r}")
    for r in args.ranks:
        if r not in (1, 2):
            p.error(f"--ranks takes 1 and/or 2, got {r}")
    return args


# -------------------------------------------------------------------------------------------- the models


def load(name: str, args: argparse.Namespace):
    """(model, calibration batches, block path) of a bench model."""
    import torch

    if name == "smollm2":
        from quantease.models import load_causal_lm
        from quantease.text import calibration_batches, load_text

        model, tok = load_causal_lm("smollm2-135m")
        batches = calibration_batches(tok, load_text("wiki", "train"), n_samples=args.samples, seq_len=args.seq_len)
        layers = model.model.layers
        return model, batches, [layers[i] for i in range(min(args.max_blocks, len(layers)))]
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=1,
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_attention_heads=max(1, args.hidden // 128),
        vocab_size=512,
        max_position_embeddings=max(args.seq_len, 64),
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 512, (1, args.seq_len), generator=g) for _ in range(args.samples)]
    return model, batches, list(model.model.layers)


# ------------------------------------------------------------------------------------------- the timers


class Split:
    """Seconds per block and phase, filled by the wrappers of ``instrument``."""

    def __init__(self) -> None:
        self.block = -1
        self.seconds: Dict[int, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.flops: Dict[int, float] = defaultdict(float)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[self.block][phase] += seconds


@contextlib.contextmanager
def instrument(split: Split) -> Iterator[None]:
    """Time the pipeline's phases by wrapping the functions that do them (restored on exit)."""
    from quantease import _hessian, distributed, offload, pipeline
    from quantease.blocks import BlockInputs

    saved = []

    def wrap(owner: Any, attr: str, make) -> None:
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, make(original))

    def timed(phase: str):
        def make(original):
            def inner(*a, **k):
                t0 = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    split.add(phase, time.perf_counter() - t0)

            return inner

        return make

    def block_io(index_of):
        """Offload's reads and writes, counted as the io of the block they move (a read precedes its block)."""

        def make(original):
            def inner(self, *a, **k):
                split.block = index_of(self, *a)
                t0 = time.perf_counter()
                try:
                    return original(self, *a, **k)
                finally:
                    split.add("io", time.perf_counter() - t0)

            return inner

        return make

    def block_total(original):
        def inner(i, *a, **k):
            split.block = i
            t0 = time.perf_counter()
            try:
                return original(i, *a, **k)
            finally:
                split.add("total", time.perf_counter() - t0)

        return inner

    def hessian_add(original):
        def inner(self, X):
            t0 = time.perf_counter()
            try:
                return original(self, X)
            finally:
                split.add("hessian", time.perf_counter() - t0)
                rows = 1
                for d in X.shape[:-1]:
                    rows *= int(d)
                split.flops[split.block] += float(rows) * self.cols * self.cols

        return inner

    wrap(pipeline, "_quantize_block", block_total)
    wrap(pipeline, "_solve_layer", timed("solve"))
    wrap(_hessian.HessianAccumulator, "add", hessian_add)
    wrap(distributed.DataParallel, "_reduce", timed("hessian"))
    wrap(pipeline._Checkpoint, "save", timed("io"))
    wrap(offload.Offload, "load_block", block_io(lambda self, name, *a: self._block_prefixes.index(f"{name}.")))
    wrap(offload.Offload, "store_block", block_io(lambda self, index, *a: index))
    # The pass making the next block's inputs runs after _quantize_block: counted into the block's total.
    wrap(BlockInputs, "advance", timed("total"))
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def rows_of(split: Split, tokens: int) -> List[Dict[str, Any]]:
    rows = []
    for block, s in sorted(split.seconds.items()):
        if block < 0:
            continue
        total = s["total"] + s["io"]
        forward = s["total"] - s["hessian"] - s["solve"]
        rows.append(
            {
                "block": block,
                "tokens_per_s": tokens / total if total > 0 else float("nan"),
                "total_s": total,
                "forward_s": forward,
                "hessian_s": s["hessian"],
                "solve_s": s["solve"],
                "io_s": s["io"],
                "hessian_gflops": split.flops[block] / s["hessian"] / 1e9 if s["hessian"] > 0 else float("nan"),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------- runs


def run_one(name: str, args: argparse.Namespace, distributed: bool) -> Dict[str, Any]:
    """Quantize the model once (this process, or this rank); its rows."""
    import tempfile

    from quantease.pipeline import quantize_model

    model, batches, blocks = load(name, args)
    tokens = sum(int(b.numel()) if hasattr(b, "numel") else int(b["input_ids"].numel()) for b in batches)
    split = Split()
    with tempfile.TemporaryDirectory() as tmp:
        offload = None
        if args.offload:
            from quantease.offload import Offload, empty_model

            # The model on disk (rank 0 writes the ranks' shared copy), then a meta-device skeleton reading it.
            source = args.source or os.path.join(tmp, "source")
            if distributed:
                import torch.distributed as dist

                if dist.get_rank() == 0:
                    model.save_pretrained(source)
                dist.barrier()
            else:
                model.save_pretrained(source)
            paths = [n for n, m in model.named_modules() if any(m is b for b in blocks)]
            del model, blocks
            model = empty_model(source)
            blocks = [model.get_submodule(n) for n in paths]
            offload = Offload(source, os.path.join(tmp, "out"))
        with instrument(split):
            t0 = time.perf_counter()
            quantize_model(
                model,
                batches,
                method=args.method,
                bits=args.bits,
                group_size=args.group_size,
                blocks=blocks,
                progress=False,
                checkpoint_dir=os.path.join(tmp, "ckpt") if args.checkpoint else None,
                distributed=distributed,
                offload=offload,
            )
            seconds = time.perf_counter() - t0
    return {"model": name, "tokens": tokens, "seconds": seconds, "blocks": rows_of(split, tokens)}


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: every rank runs, rank 0 prints the slowest rank's figures as JSON."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        mine = run_one(args.worker, args, distributed=True)
        everyone: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        dist.barrier()  # no rank tears gloo down while another still talks to it (that aborted a rank once)
    finally:
        dist.destroy_process_group()
    if int(os.environ["RANK"]) == 0:
        slowest = dict(max(everyone, key=lambda r: r["seconds"]))  # the rank the run waited for
        print("RESULT " + json.dumps(slowest), flush=True)


def two_ranks(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    import tempfile

    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [os.path.abspath(__file__), "--worker", name, "--method", args.method, "--bits", str(args.bits)]
    for flag in ("group_size", "samples", "seq_len", "max_blocks", "hidden", "mlp"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    for flag in ("checkpoint", "offload"):
        if getattr(args, flag):
            cmd.append("--" + flag)
    with tempfile.TemporaryDirectory() as source:
        done = subprocess.run(cmd + ["--source", source], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    line = [s for s in done.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def hessian_rate(cols: int, rows: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of HessianAccumulator.add on rows x cols float32 batches (rows x cols^2 flops each)."""
    import numpy as np

    from quantease import HessianAccumulator

    X = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    acc = HessianAccumulator(cols)
    acc.add(X)
    _, seconds = machine.best_of(lambda: acc.add(X), repeats)
    return rows * cols * cols / seconds / 1e9


def print_rows(label: str, result: Dict[str, Any]) -> None:
    print(f"\n## {result['model']}, {label}: {result['tokens']} calibration tokens, {result['seconds']:.2f} s")
    print("| block | tokens/s | total s | forward s | hessian s | solve s | io s | hessian GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["blocks"]:
        print(
            f"| {r['block']} | {r['tokens_per_s']:.0f} | {r['total_s']:.2f} | {r['forward_s']:.2f} | "
            f"{r['hessian_s']:.2f} | {r['solve_s']:.2f} | {r['io_s']:.2f} | {r['hessian_gflops']:.1f} |",
            flush=True,
        )


# A model's blocks against the 7B block the synthetic run measures (hidden 4096, MLP 11008, 32 heads, 32 KV
# heads, 32 blocks): k_f scales the forward and Hessian work per token, k_s the solves (cols^3 + rows cols^2 per
# layer, quantease.distributed.solve_cost), k_io the block's bytes. 70B: 80 blocks of hidden 8192, MLP 28672,
# 64 heads, 8 KV heads.
MODELS = {
    "7B": dict(blocks=32, k_f=1.0, k_s=1.0, k_io=1.0),
    "70B": dict(blocks=80, k_f=5.0, k_s=10.0, k_io=4.2),
}


def estimate(block: Dict[str, Any], tokens: int, threads: int, n_tokens: int, machines: int, cores: int, model: dict):
    """Paper estimate of a whole run (seconds per phase) from one measured 7B-shaped block.

    block: the synthetic block's row (1 process x ``threads`` threads on ``tokens`` calibration tokens). The
    forward passes and Hessians scale with the tokens and split over all machines' cores: f = (forward +
    hessian) x threads / tokens core-seconds per token. A true-sequential group's layers are solved by at most
    two owners (down_proj alone), each solve at the measured speed scaled by threads / cores. Every machine
    reads and writes every block (io, as measured). T = L x (k_f f n / (N C) + k_s s threads / (C min(N, 2))
    + k_io io)."""
    per_token = (block["forward_s"] + block["hessian_s"]) * threads / tokens
    calibrate = model["blocks"] * model["k_f"] * per_token * n_tokens / (machines * cores)
    solve = model["blocks"] * model["k_s"] * block["solve_s"] * threads / (cores * min(machines, 2))
    io = model["blocks"] * model["k_io"] * block["io_s"]
    return {"forward_hessian_s": calibrate, "solve_s": solve, "io_s": io, "total_s": calibrate + solve + io}


def print_estimate(result: Dict[str, Any], threads: int, args: argparse.Namespace) -> List[Dict[str, Any]]:
    block = result["blocks"][0]
    print(
        f"\n## PAPER ESTIMATE, not a measurement: a 7B and a 70B model on N machines of C = {args.cores} cores, "
        f"{args.estimate_tokens} calibration tokens, scaled from the synthetic block measured above "
        f"(1 process x {threads} threads; formula: bench/pipeline.py estimate)"
    )
    if (args.hidden, args.mlp) != (4096, 11008):
        print(f"(the measured block is {args.hidden} x {args.mlp}, not 7B-shaped: these figures mean nothing)")
    print("| model | N | forward + Hessian h | solve h | io h | total h |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name, model in MODELS.items():
        for machines in args.machines:
            e = estimate(block, result["tokens"], threads, args.estimate_tokens, machines, args.cores, model)
            print(
                f"| {name} | {machines} | {e['forward_hessian_s'] / 3600:.2f} | {e['solve_s'] / 3600:.2f} | "
                f"{e['io_s'] / 3600:.2f} | {e['total_s'] / 3600:.2f} |"
            )
            rows.append({"model": name, "machines": machines, "cores": args.cores, **e})
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    import torch

    info = machine.describe()
    info["gemm_float32_gflops"] = machine.gemm_gflops()
    cols = sorted({args.hidden, args.mlp} if "synthetic" in args.models else set()) or [576, 1536]
    info["hessian_update_gflops"] = {c: hessian_rate(c) for c in cols}
    print(json.dumps(info, indent=1), flush=True)
    for c, rate in info["hessian_update_gflops"].items():
        print(
            f"Hessian update (float32 rank-2048 update into a float64 sum, {c} columns): {rate:.1f} GFLOP/s, "
            f"{rate / info['gemm_float32_gflops']:.0%} of the float32 GEMM's {info['gemm_float32_gflops']:.1f}"
        )
    results = []
    estimates: List[Dict[str, Any]] = []
    for name in args.models:
        for ranks in args.ranks:
            if ranks == 1:
                torch.set_num_threads(args.threads)
                label = f"1 process x {args.threads} threads"
                result = run_one(name, args, distributed=False)
            else:
                label = "2 ranks x 1 thread"
                result = two_ranks(name, args)
            result["configuration"] = label
            print_rows(label, result)
            results.append(result)
            if name == "synthetic" and ranks == 1:
                estimates = print_estimate(result, args.threads, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "runs": results, "paper_estimate": estimates}, f, indent=1)


if __name__ == "__main__":
    main()
