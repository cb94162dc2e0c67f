"""Every solver configuration worth checking for reproducibility, as named calls with a digest of their output.

Used by the thread tests: the same digests for any OMP_NUM_THREADS / OPENBLAS_NUM_THREADS (test_threads.py,
in subprocesses) and for Python threads calling the solvers at once (test_concurrency.py).

The problems exercise what changes the work split: several row panels of 128 with a ragged last one (203
rows, not a multiple of the 8-row SIMD batch either), column blocks of 128 with a ragged last one (320
columns), groups, act-order, dead columns (diag(H) == 0), and a rank-deficient float64 H that needs the
damping ladder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
from typing import Any, Callable, Dict

import numpy as np

import problems
import quantease


def make_problems() -> Dict[str, problems.Problem]:
    dead = problems.dead_columns(203, 320, seed=11)
    rank = problems.rank_deficient(137, 192, seed=12)
    rank = dataclasses.replace(rank, H=rank.H.astype(np.float64))
    return {"dead": dead, "rank": rank}


def _cases() -> Dict[str, Callable[[problems.Problem], Any]]:
    from quantease import gguf as qg

    q = quantease
    return {
        "rtn_g64_mse": lambda p: q.rtn(p.W, bits=3, group_size=64, mse=True),
        "rtn_sym_fp16": lambda p: q.rtn(p.W, bits=4, sym=True, fp16_scales=True),
        "gptq": lambda p: q.gptq(p.W, p.H, bits=3),
        "gptq_g64_act": lambda p: q.gptq(p.W, p.H, bits=3, group_size=64, act_order=True),
        "gptq_g32_static_sym_mse": lambda p: q.gptq(
            p.W, p.H, bits=4, group_size=32, static_groups=True, sym=True, mse=True
        ),
        "gptq_ref_g32_act": lambda p: q.gptq(p.W, p.H, bits=3, group_size=32, reference=True, act_order=True),
        "gptq_g64_block96": lambda p: q.gptq(p.W, p.H, bits=2, group_size=64, block_size=96),
        "quantease": lambda p: q.quantease(p.W, p.H, bits=3, iters=4),
        "quantease_g64_outliers": lambda p: q.quantease(p.W, p.H, bits=3, group_size=64, iters=3, outliers=0.01),
        "quantease_gptq_refit": lambda p: q.quantease(p.W, p.H, bits=3, iters=3, init="gptq", refit=1),
        "quantease_leanquant": lambda p: q.quantease(p.W, p.H, bits=3, group_size=64, iters=3, init="leanquant"),
        "quantease_quantized": lambda p: q.quantease(p.W, p.H, bits=4, iters=3, relaxed=False, act_order=False),
        "easyquant": lambda p: q.easyquant(p.W, bits=3, steps=20),
        "easyquant_g64_h": lambda p: q.easyquant(p.W, bits=4, group_size=64, steps=10, H=p.H),
        "leanquant": lambda p: q.leanquant(p.W, p.H, bits=3),
        "leanquant_affine": lambda p: q.leanquant(p.W, p.H, bits=3, grid="affine"),
        "leanquant_g64": lambda p: q.leanquant(p.W, p.H, bits=3, group_size=64),
        "leanquant_affine_g64": lambda p: q.leanquant(p.W, p.H, bits=4, grid="affine", group_size=64, act_order=False),
        "layer_loss": lambda p: q.layer_loss(p.W, 0.9 * p.W, p.H),
        "hessian_f64": lambda p: _accumulate(p, "float64"),
        "hessian_f32": lambda p: _accumulate(p, "float32"),
        "pack_gptq": lambda p: _pack_gptq(p),
        "pack_quantease": lambda p: _pack_quantease(p),
        # llama.cpp's block types: 32-weight blocks on the whole problem, 256-weight ones on its first 256 columns
        "gguf_rtn_q4_k_imatrix": lambda p: _on_blocks(
            p, 256, lambda W, H: q.rtn(W, gguf="Q4_K", imatrix=np.diagonal(H))
        ),
        "gguf_gptq_q4_k": lambda p: _on_blocks(p, 256, lambda W, H: q.gptq(W, H, gguf="Q4_K", act_order=True)),
        "gguf_quantease_q4_0": lambda p: q.quantease(p.W, p.H, gguf="Q4_0", iters=2, init="gptq"),
        "gguf_pack_q6_k": lambda p: _on_blocks(p, 256, lambda W, H: qg.pack(q.gptq(W, H, gguf="Q6_K"))),
        "gguf_pack_q5_1": lambda p: qg.pack(q.rtn(p.W, gguf="Q5_1")),
    }


def _on_blocks(p: problems.Problem, block: int, call: Callable[[np.ndarray, np.ndarray], Any]) -> Any:
    """call(W, H) on the problem's first whole blocks of columns (None when it has fewer than one block)."""
    cols = p.W.shape[1] // block * block
    return call(np.ascontiguousarray(p.W[:, :cols]), np.ascontiguousarray(p.H[:cols, :cols])) if cols else None


def _accumulate(p: problems.Problem, dtype: str) -> np.ndarray:
    acc = quantease.HessianAccumulator(p.W.shape[1], dtype=dtype)
    X = p.X if p.X is not None else np.random.default_rng(0).standard_normal((300, p.W.shape[1]))
    for part in np.array_split(X, 3):  # uneven batches, float32 / float64 / float16
        acc.add(part)
    acc.add(X[:37].astype(np.float64))
    acc.add(X[:5].astype(np.float16))
    return acc.hessian()


def _pack_gptq(p: problems.Problem) -> Dict[str, np.ndarray]:
    from quantease import export

    rows = p.W.shape[0] // 8 * 8  # the format packs 8 codes per int32 along both dimensions
    r = quantease.gptq(p.W[:rows], p.H, bits=4, group_size=64, act_order=True, fp16_scales=True)
    return {k: np.asarray(v) for k, v in export.gptq_tensors(r, "layer").items()}


def _pack_quantease(p: problems.Problem) -> Dict[str, np.ndarray]:
    from quantease import export

    r = quantease.leanquant(p.W, p.H, bits=3, group_size=64)
    tensors, meta = export.quantease_tensors(r, "layer")
    return {**tensors, "meta": {k: v for k, v in meta.items() if k != "seconds"}}


CASES = _cases()


def _feed(h, value: Any) -> None:
    """Everything in a result that is a number, not a time."""
    if value is None:
        h.update(b"None")
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for k in sorted(value):
            if "seconds" in k or "times" in k:
                continue
            h.update(str(k).encode())
            _feed(h, value[k])
    elif dataclasses.is_dataclass(value):
        _feed(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif isinstance(value, (list, tuple)):
        for v in value:
            _feed(h, v)
    else:
        h.update(repr(value).encode())


def digest(result: Any) -> str:
    h = hashlib.sha256()
    _feed(h, result)
    return h.hexdigest()


def run(name: str, problem: problems.Problem) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the damping ladder's warning on the rank problem
        return CASES[name](problem)


def all_digests() -> Dict[str, str]:
    out = {}
    for pname, p in make_problems().items():
        for name in CASES:
            out[f"{pname}/{name}"] = digest(run(name, p))
    return out


if __name__ == "__main__":
    json.dump(all_digests(), sys.stdout)
    print()
