"""Adapters to installed peer packages, run on a plain NumPy problem on the CPU.

Every adapter takes the same NumPy inputs as our solvers and returns ``(Q, seconds)``: the dequantized
float32 weight (rows x cols) and the wall time of the peer's quantizer call (the solve only: not the
package import, not the numpy <-> torch conversion, not a worker process start).

| peer            | what runs                                                   | needs H |
|-----------------|-------------------------------------------------------------|---------|
| ``gptqmodel``     | ``gptqmodel.quantization.gptq.GPTQ.quantize`` (GPTQModel)     | yes     |
| ``llmcompressor`` | ``llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight`` | yes     |
| ``auto-gptq``     | ``auto_gptq.quantization.GPTQ.fasterquant`` (AutoGPTQ)        | yes     |
| ``hqq``           | ``hqq.core.quantize.Quantizer.quantize`` (half-quadratic, lp 0.7) | no  |
| ``bitsandbytes``  | ``bitsandbytes.functional.quantize_4bit`` NF4, blocks of 64   | no      |

Peers rarely install next to each other and next to torch 2.13 in one environment (see README.md), so a
peer is looked for first in the running interpreter and then in the peer environments listed in
``PEER_PYTHONS`` (override with ``QUANTEASE_PEER_PYTHON_<NAME>``, e.g. ``QUANTEASE_PEER_PYTHON_GPTQMODEL``),
where it runs in a worker process fed through .npy files. A peer found nowhere is reported with the reason
(``reason(name)``), so the bench can print "not installable: <reason>" instead of dropping it.

    from bench.peers import installed
    installed.available("hqq")                 # -> bool
    installed.reason("auto-gptq")              # -> '' when usable, else why not
    Q, sec = installed.run("gptqmodel", W, H, bits=4, group_size=128, threads=2)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["PEERS", "PEER_PYTHONS", "INSTALL_NOTES", "PeerUnavailable", "available", "reason", "run", "status", "where"]

REPO = Path(__file__).resolve().parents[2]

PEERS = ("gptqmodel", "llmcompressor", "auto-gptq", "hqq", "bitsandbytes")

# The module each peer must import (and, for auto-gptq, the submodule we actually use).
_MODULES = {
    "gptqmodel": "gptqmodel.quantization.gptq",
    "llmcompressor": "llmcompressor.modifiers.gptq.gptq_quantize",
    "auto-gptq": "auto_gptq",
    "hqq": "hqq.core.quantize",
    "bitsandbytes": "bitsandbytes.functional",
}

# Environments tried after the running interpreter, per peer (see README.md for how they were made).
PEER_PYTHONS = {
    "gptqmodel": ["/work/venv-peers/bin/python"],
    "auto-gptq": ["/work/venv-peers/bin/python"],
    "llmcompressor": ["/work/venv-llmc/bin/python"],
    "hqq": ["/work/venv/bin/python"],
    "bitsandbytes": ["/work/venv/bin/python"],
}

# What was observed installing each peer next to torch 2.13.0+cpu on this machine (2026-11, Python 3.11);
# printed with the import error when a peer is usable nowhere.
INSTALL_NOTES = {
    "gptqmodel": (
        "gptqmodel>=7.0 requires torch>=2.14.1 (pip would replace torch 2.13 by 2.15 + CUDA 13 "
        "wheels); 6.0.3 builds from source only with --no-build-isolation, pins numpy==2.2.6 and "
        "imports only with transformers 5.6.2 + kernels 0.12.3 (not with transformers>=5.17)"
    ),
    "llmcompressor": (
        "llmcompressor 0.14.0.1 needs transformers<=5.17.0 (conflicts with gptqmodel 6.0.3's "
        "working transformers 5.6.2 and with the shared venv's 5.23.0): own environment"
    ),
    "auto-gptq": (
        "auto-gptq 0.7.1 (archived) ships a CUDA-only wheel and its package __init__ fails with "
        "transformers 5.x: \"ImportError: cannot import name 'no_init_weights' from "
        "'transformers.modeling_utils'\"; only its quantization submodule is usable, and its "
        'fasterquant calls torch.cuda.synchronize() ("AssertionError: Torch not compiled with CUDA '
        'enabled" on CPU torch), which the adapter turns into a no-op'
    ),
    "hqq": "",
    "bitsandbytes": "",
}


class PeerUnavailable(RuntimeError):
    """The peer is not installed (or does not import) in any environment we know of."""


def _env_override(name: str) -> str | None:
    return os.environ.get("QUANTEASE_PEER_PYTHON_" + name.upper().replace("-", "_"))


def _import_here(name: str) -> str:
    """'' when the peer's adapter imports in this interpreter, else the last line of the error."""
    try:
        if name == "auto-gptq":
            _load_autogptq()
        else:
            __import__(_MODULES[name])
        return ""
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _probe_python(python: str, name: str) -> str:
    """'' when the peer imports under ``python``, else why not (first/last error line)."""
    if not Path(python).exists():
        return f"{python} does not exist"
    code = (
        "import sys; sys.path.insert(0, %r); from bench.peers import installed as m; "
        "r = m._import_here(%r); print('OK' if not r else 'ERR ' + r)"
    ) % (str(REPO), name)
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, env=_worker_env(1))
    except subprocess.TimeoutExpired:
        return f"import of {name} under {python} timed out"
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("OK", "ERR "))]
    if lines and lines[-1] == "OK":
        return ""
    if lines:
        return lines[-1][4:]
    err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    return err[-1][:300] if err else f"{python} exited with {out.returncode}"


_STATUS: dict[str, tuple[str | None, str]] = {}


def where(name: str) -> tuple[str | None, str]:
    """``(python, reason)``: the interpreter that runs the peer (``sys.executable`` when this one does) and
    '' -- or ``(None, reason)`` when none does. Cached per process."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    if name in _STATUS:
        return _STATUS[name]
    why_here = _import_here(name)
    if not why_here:
        _STATUS[name] = (sys.executable, "")
        return _STATUS[name]
    reasons = [f"here: {why_here}"]
    override = _env_override(name)
    candidates = [override] if override else PEER_PYTHONS.get(name, [])
    for py in candidates:
        if os.path.abspath(os.path.dirname(os.path.dirname(py))) == os.path.abspath(sys.prefix):
            continue  # this very environment (venv pythons are symlinks: compare prefixes, not targets)
        why = _probe_python(py, name)
        if not why:
            _STATUS[name] = (py, "")
            return _STATUS[name]
        reasons.append(f"{py}: {why}")
    note = INSTALL_NOTES.get(name, "")
    _STATUS[name] = (None, "; ".join(reasons) + (f" [{note}]" if note else ""))
    return _STATUS[name]


def available(name: str) -> bool:
    return where(name)[0] is not None


def reason(name: str) -> str:
    return where(name)[1]


def status() -> dict[str, dict]:
    """``{peer: {"python": ..., "reason": ...}}`` for every peer."""
    return {n: dict(zip(("python", "reason"), where(n))) for n in PEERS}


# ---------------------------------------------------------------- adapters (run in the peer's interpreter)


def _threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads) if threads else (os.cpu_count() or 1)))


def _gptqmodel_gptq(
    W,
    H,
    bits=4,
    group_size=-1,
    sym=False,
    act_order=False,
    static_groups=False,
    damp=0.01,
    block_size=128,
    threads=None,
):
    import torch
    import torch.nn as nn
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    _threads(threads)
    rows, cols = W.shape
    layer = nn.Linear(cols, rows, bias=False)
    layer.weight.data = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
    # act_group_aware is GPTQModel's own ordering (on by default for GPTQ): off, to run plain GPTQ.
    qcfg = QuantizeConfig(
        bits=bits,
        group_size=group_size,
        sym=sym,
        desc_act=act_order,
        act_group_aware=False,
        static_groups=static_groups,
        damp_percent=damp,
    )
    g = GPTQ(layer, qcfg)
    g.quantizer.configure(perchannel=True)
    g.H = torch.from_numpy(np.array(H, dtype=np.float32, copy=True))
    g.nsamples = 1
    g._hessian_dirty = False
    with torch.inference_mode():
        t0 = time.perf_counter()
        Q = g.quantize(blocksize=block_size)[0]
        sec = time.perf_counter() - t0
    return Q.float().numpy(), sec


def _load_autogptq():
    """auto_gptq's GPTQ class. Its package __init__ needs transformers 4.x; when it fails, load the
    self-contained ``auto_gptq/quantization`` subpackage on its own (it needs only torch + transformers)."""
    try:
        from auto_gptq.quantization import GPTQ

        return GPTQ
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.find_spec("auto_gptq")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'auto_gptq'")
    qdir = Path(list(spec.submodule_search_locations)[0]) / "quantization"
    modname = "_autogptq_quantization"
    if modname in sys.modules:
        return sys.modules[modname].GPTQ
    sub = importlib.util.spec_from_file_location(modname, qdir / "__init__.py", submodule_search_locations=[str(qdir)])
    mod = importlib.util.module_from_spec(sub)
    sys.modules[modname] = mod
    sub.loader.exec_module(mod)
    return mod.GPTQ


def _autogptq_gptq(
    W,
    H,
    bits=4,
    group_size=-1,
    sym=False,
    act_order=False,
    static_groups=False,
    damp=0.01,
    block_size=128,
    threads=None,
):
    import torch
    import torch.nn as nn

    GPTQ = _load_autogptq()
    _threads(threads)
    rows, cols = W.shape
    layer = nn.Linear(cols, rows, bias=False)
    layer.weight.data = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
    g = GPTQ(layer)
    g.quantizer.configure(bits, perchannel=True, sym=sym, mse=False)
    g.H = torch.from_numpy(np.array(H, dtype=np.float32, copy=True))
    g.nsamples = 1
    # AutoGPTQ's fasterquant ends its timing with torch.cuda.synchronize(), which asserts on a CPU-only
    # torch ("Torch not compiled with CUDA enabled"); make it a no-op -- nothing else in the solve is CUDA.
    sync = torch.cuda.synchronize
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    try:
        t0 = time.perf_counter()
        g.fasterquant(
            blocksize=block_size, percdamp=damp, group_size=group_size, actorder=act_order, static_groups=static_groups
        )
        sec = time.perf_counter() - t0
    finally:
        torch.cuda.synchronize = sync
    return layer.weight.data.float().numpy(), sec


def _llmcompressor_gptq(
    W,
    H,
    bits=4,
    group_size=-1,
    sym=False,
    act_order=False,
    static_groups=False,
    damp=0.01,
    block_size=128,
    threads=None,
):
    """llm-compressor's GPTQ. Its grid comes from the weight observer BEFORE the solve (min-max of W per
    channel or group: static groups); act-order maps to its "weight" (dynamic g_idx) or "static" ordering."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils import calculate_qparams
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    _threads(threads)
    rows, cols = W.shape
    kw = dict(num_bits=bits, type="int", symmetric=sym)
    if group_size == -1:
        kw["strategy"] = "channel"
    else:
        kw.update(strategy="group", group_size=group_size)
    if act_order:
        kw["actorder"] = "static" if static_groups else "weight"
    qargs = QuantizationArgs(**kw)
    Wt = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
    Ht = torch.from_numpy(np.array(H, dtype=np.float32, copy=True))
    t0 = time.perf_counter()
    gs = cols if group_size == -1 else group_size
    Wg = Wt.reshape(rows, cols // gs, gs)
    scale, zp = calculate_qparams(Wg.amin(-1), Wg.amax(-1), qargs)
    Q = quantize_weight(Wt[None], Ht[None], scale[None], zp[None], None, qargs, blocksize=block_size, percdamp=damp)[0][
        0
    ]
    sec = time.perf_counter() - t0
    return Q.float().numpy(), sec


def _hqq(W, H=None, bits=4, group_size=64, threads=None):
    """HQQ half-quadratic quantizer: affine grid per (row, group of ``group_size`` input columns), zero point
    (and scale) optimised by the proximal lp-norm solver (p = 0.7, 20 iterations), zero rounded at 4 bits as
    HQQ's own ``hqq_base_quant_config`` does."""
    import torch
    from hqq.core.quantize import Quantizer

    _threads(threads)
    Wt = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
    t0 = time.perf_counter()
    Wq, meta = Quantizer.quantize(
        Wt,
        nbits=bits,
        group_size=group_size,
        optimize=True,
        round_zero=(bits == 4),
        axis=1,
        bitpack=False,
        compute_dtype=torch.float32,
        device="cpu",
    )
    meta["compute_dtype"] = torch.float32
    Q = Quantizer.dequantize(Wq, meta)
    sec = time.perf_counter() - t0
    return Q.float().numpy(), sec


def _bnb_nf4(W, H=None, bits=4, group_size=64, threads=None):
    """bitsandbytes NF4: blocks of ``group_size`` (64) consecutive weights, 16 fixed NormalFloat levels
    scaled by the block's absmax."""
    import bitsandbytes.functional as F
    import torch

    if bits != 4:
        raise ValueError("bitsandbytes NF4 is 4-bit only")
    _threads(threads)
    Wt = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
    t0 = time.perf_counter()
    q, state = F.quantize_4bit(Wt, blocksize=group_size, quant_type="nf4")
    Q = F.dequantize_4bit(q, state)
    sec = time.perf_counter() - t0
    return Q.float().numpy(), sec


_ADAPTERS = {
    "gptqmodel": _gptqmodel_gptq,
    "llmcompressor": _llmcompressor_gptq,
    "auto-gptq": _autogptq_gptq,
    "hqq": _hqq,
    "bitsandbytes": _bnb_nf4,
}


def _worker_env(threads: int | None) -> dict:
    env = dict(os.environ)
    n = str(max(1, int(threads) if threads else (os.cpu_count() or 1)))
    env.update(
        OMP_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_OFFLINE="1",
    )
    return env


def run(
    name: str, W: np.ndarray, H: np.ndarray | None = None, *, timeout: float = 3600, **kwargs
) -> tuple[np.ndarray, float]:
    """Run peer ``name`` on ``W`` (and ``H`` for the GPTQ peers); returns ``(Q float32, seconds)``.

    kwargs go to the adapter (bits, group_size, sym, act_order, static_groups, damp, block_size, threads).
    Raises ``PeerUnavailable`` (with the reason) when the peer is usable nowhere.
    """
    python, why = where(name)
    if python is None:
        raise PeerUnavailable(f"{name} not installable: {why}")
    if python == sys.executable:
        if H is None:
            return _ADAPTERS[name](W, **kwargs)
        return _ADAPTERS[name](W, H, **kwargs)
    with tempfile.TemporaryDirectory(prefix="peer_") as tmp:
        np.save(Path(tmp) / "W.npy", np.asarray(W, dtype=np.float32))
        if H is not None:
            np.save(Path(tmp) / "H.npy", np.asarray(H, dtype=np.float32))
        (Path(tmp) / "kwargs.json").write_text(json.dumps(kwargs))
        proc = subprocess.run(
            [python, "-m", "bench.peers.installed", "--worker", name, tmp],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_worker_env(kwargs.get("threads")),
        )
        out = Path(tmp) / "Q.npy"
        if proc.returncode != 0 or not out.exists():
            err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise RuntimeError(
                f"{name} worker under {python} failed (exit {proc.returncode}): " + (err[-1] if err else "no output")
            )
        seconds = json.loads((Path(tmp) / "seconds.json").read_text())["seconds"]
        return np.load(out), float(seconds)


def _worker(name: str, folder: str) -> None:
    d = Path(folder)
    W = np.load(d / "W.npy")
    H = np.load(d / "H.npy") if (d / "H.npy").exists() else None
    kwargs = json.loads((d / "kwargs.json").read_text())
    Q, sec = _ADAPTERS[name](W, **kwargs) if H is None else _ADAPTERS[name](W, H, **kwargs)
    np.save(d / "Q.npy", np.asarray(Q, dtype=np.float32))
    (d / "seconds.json").write_text(json.dumps({"seconds": sec}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        for peer, st in status().items():
            print(f"{peer:14s} {'OK  ' + st['python'] if st['python'] else 'not installable: ' + st['reason']}")
