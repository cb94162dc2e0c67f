"""Running llama.cpp's tools (built by scripts/build_llama_cpp.sh) on GGUF files: for bench/ and tests/.

Each function runs one tool in a subprocess and returns what it printed or the figure it reports; a tool
that fails raises RuntimeError with the end of its output.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build_llama_cpp.sh"


def tools_dir() -> Path:
    """The folder of llama.cpp's tools: built on the first call (minutes), found in the cache after."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def run(
    tool: str,
    args: Sequence[str],
    *,
    bin_dir: Optional[Path] = None,
    timeout: float = 1800,
    threads: Optional[int] = None,
) -> str:
    """Runs ``tool`` with ``args`` (plus ``-t threads`` when given); returns its stdout and stderr."""
    exe = (bin_dir or tools_dir()) / tool
    cmd: List[str] = [str(exe), *map(str, args)]
    if threads is not None:
        cmd += ["-t", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} exited {proc.returncode}: {' '.join(cmd)}\n{out[-3000:]}")
    return out


def perplexity(
    model: os.PathLike,
    text_file: os.PathLike,
    *,
    ctx: int = 512,
    chunks: int = -1,
    bin_dir: Optional[Path] = None,
    threads: Optional[int] = None,
) -> float:
    """llama-perplexity's final estimate: chunks of ``ctx`` tokens, each scoring its second half."""
    out = run(
        "llama-perplexity",
        ["-m", model, "-f", text_file, "-c", ctx, "-b", ctx, "--chunks", chunks],
        bin_dir=bin_dir,
        threads=threads,
    )
    match = re.search(r"Final estimate: PPL = ([0-9.]+|nan|inf)", out)
    if match is None:
        raise RuntimeError(f"llama-perplexity printed no final estimate:\n{out[-3000:]}")
    return float(match.group(1)) if match.group(1) not in ("nan", "inf") else math.inf


def imatrix(
    model: os.PathLike,
    text_file: os.PathLike,
    out_file: os.PathLike,
    *,
    ctx: int = 512,
    chunks: int = -1,
    bin_dir: Optional[Path] = None,
    threads: Optional[int] = None,
) -> Path:
    """llama-imatrix: the mean of x^2 per input column of every matrix, over ``chunks`` chunks of text."""
    run(
        "llama-imatrix",
        ["-m", model, "-f", text_file, "-o", out_file, "-c", ctx, "-b", ctx, "--chunks", chunks, "--no-ppl"],
        bin_dir=bin_dir,
        threads=threads,
    )
    return Path(out_file)


def quantize(
    src: os.PathLike,
    dst: os.PathLike,
    ftype: str,
    *,
    imatrix_file: Optional[os.PathLike] = None,
    bin_dir: Optional[Path] = None,
    threads: Optional[int] = None,
) -> Path:
    """llama-quantize ``src`` to file type ``ftype`` ("Q4_0", "Q4_K_M", ...), with an importance matrix."""
    args: List[str] = [] if imatrix_file is None else ["--imatrix", str(imatrix_file)]
    nthreads = [] if threads is None else [str(threads)]
    # llama-quantize takes its thread count as a trailing positional argument, not -t.
    run("llama-quantize", [*args, src, dst, ftype, *nthreads], bin_dir=bin_dir)
    return Path(dst)


def generate(
    model: os.PathLike, prompt: str, *, tokens: int = 16, bin_dir: Optional[Path] = None, threads: Optional[int] = None
) -> str:
    """Greedy continuation of ``prompt`` by llama-completion; returns what it printed to stdout."""
    exe = (bin_dir or tools_dir()) / "llama-completion"
    cmd = [str(exe), "-m", str(model), "-p", prompt, "-n", str(tokens), "--temp", "0", "-no-cnv", "--no-warmup"] + (
        [] if threads is None else ["-t", str(threads)]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-completion exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def chunk_perplexity(model, ids, *, ctx: int = 512, chunks: int = -1) -> float:
    """llama-perplexity's protocol on a PyTorch causal LM: the token ids cut into chunks of ``ctx``, each
    chunk run alone and only its second half scored (tokens ctx/2 + 1 .. ctx - 1, each predicted from all
    tokens before it in the chunk); exp of the mean NLL. For a model whose tokenizer does not add BOS."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    ids = np.asarray(ids, dtype=np.int64)
    n = ids.size // ctx if chunks < 0 else min(chunks, ids.size // ctx)
    first = ctx // 2
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(n):
            window = torch.from_numpy(ids[i * ctx : (i + 1) * ctx].copy())[None]
            logits = model(input_ids=window, use_cache=False).logits[0, first:-1].float()
            targets = window[0, first + 1 :]
            nll += float(F.cross_entropy(logits, targets, reduction="sum"))
            count += targets.numel()
    return math.exp(nll / count)
