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
    return perplexity_stats(model, text_file, ctx=ctx, chunks=chunks, bin_dir=bin_dir, threads=threads)["ppl"]


def perplexity_stats(
    model: os.PathLike,
    text_file: os.PathLike,
    *,
    ctx: int = 512,
    chunks: int = -1,
    bin_dir: Optional[Path] = None,
    threads: Optional[int] = None,
) -> dict:
    """llama-perplexity's final estimate ``ppl``, its standard error ``se`` (as llama-perplexity prints it) and
    ``chunk_nll``, every chunk's mean negative log-likelihood, recovered from the running estimates it prints
    ([k] = exp of the mean over the first k chunks): the paired per-chunk differences of two files."""
    out = run(
        "llama-perplexity",
        ["-m", model, "-f", text_file, "-c", ctx, "-b", ctx, "--chunks", chunks],
        bin_dir=bin_dir,
        threads=threads,
    )
    match = re.search(r"Final estimate: PPL = ([0-9.]+|nan|inf)(?: \+/- ([0-9.]+))?", out)
    if match is None:
        raise RuntimeError(f"llama-perplexity printed no final estimate:\n{out[-3000:]}")
    ppl = float(match.group(1)) if match.group(1) not in ("nan", "inf") else math.inf
    running = [float(v) for _, v in re.findall(r"\[(\d+)\]([0-9.]+)", out)]
    log_running = [math.log(v) for v in running if v > 0]
    chunk_nll = [k * lp - (k - 1) * (log_running[k - 2] if k > 1 else 0.0) for k, lp in enumerate(log_running, 1)]
    return {"ppl": ppl, "se": float(match.group(2)) if match.group(2) else None, "chunk_nll": chunk_nll}


def paired_difference(a: list, b: list) -> tuple:
    """Mean and standard error of the per-chunk NLL difference b - a (two files on the same chunks)."""
    diff = [y - x for x, y in zip(a, b)]
    n = len(diff)
    if n < 2:
        return (diff[0] if diff else math.nan), math.nan
    mean = sum(diff) / n
    var = sum((d - mean) ** 2 for d in diff) / (n - 1)
    return mean, math.sqrt(var / n)


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


def quantize_matrix(
    W,
    ggml_type: str,
    work_dir: os.PathLike,
    *,
    imatrix=None,
    bin_dir: Optional[Path] = None,
    threads: Optional[int] = None,
):
    """llama-quantize's own blocks of one matrix W (rows x cols, float32): W is written as the only tensor
    (``blk.0.ffn_down.weight``) of a minimal llama F32 GGUF, quantized with ``--pure`` to ``ggml_type``
    ("Q4_K", "Q3_K", ...), with ``imatrix`` (cols values: what llama-imatrix collects, the mean of x^2 per
    input column) written as llama-imatrix's GGUF file; returns the tensor's bytes read back from the output
    (rows x bytes per row, uint8; ``gguf.quants.dequantize(raw, type)`` gives its values).

    llama-quantize divides the file's summed x^2 by its token count; its searches only use the importance
    as a per-column weight, so any positive multiple of the mean (diag(H) of H = (2/n) XᵀX, say) gives the
    same bytes up to float rounding (exactly for a power of two)."""
    import gguf
    import numpy as np

    W = np.ascontiguousarray(W, dtype=np.float32)
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {W.shape}")
    rows, cols = W.shape
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = "blk.0.ffn_down.weight"
    src, dst = work / "matrix-f32.gguf", work / f"matrix-{ggml_type}.gguf"
    writer = gguf.GGUFWriter(str(src), "llama")
    # The hyper-parameters llama-quantize's model loader reads; it checks no tensor shape against them.
    writer.add_context_length(2048)
    writer.add_embedding_length(cols)
    writer.add_feed_forward_length(rows)
    writer.add_block_count(1)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor(name, W)
    _write_gguf(writer)
    args: List[str] = ["--pure"]
    if imatrix is not None:
        importance = np.asarray(imatrix, dtype=np.float32).reshape(1, cols)
        im_file = work / "matrix-imatrix.gguf"
        im = gguf.GGUFWriter(str(im_file), "imatrix")  # llama-imatrix's layout: sums of x^2 and the count
        im.add_type("imatrix")
        im.add_array("imatrix.datasets", ["quantease"])
        im.add_uint32("imatrix.chunk_count", 1)
        im.add_uint32("imatrix.chunk_size", 1)
        im.add_tensor(f"{name}.in_sum2", importance)
        im.add_tensor(f"{name}.counts", np.ones((1, 1), np.float32))
        _write_gguf(im)
        args += ["--imatrix", str(im_file)]
    nthreads = [] if threads is None else [str(threads)]
    run("llama-quantize", [*args, src, dst, ggml_type, *nthreads], bin_dir=bin_dir)
    (tensor,) = [t for t in gguf.GGUFReader(str(dst)).tensors if t.name == name]
    if tensor.tensor_type.name != ggml_type.upper():
        raise RuntimeError(f"llama-quantize wrote {tensor.tensor_type.name}, not {ggml_type}")
    return np.array(tensor.data, dtype=np.uint8).reshape(rows, -1)


def _write_gguf(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
