"""Export quantized layers to safetensors: GPTQ-packed checkpoints and quantease's own format.

Two writers, each with loaders that rebuild the dense weight (documented layouts in the module docstrings of
the sections below and in the README):

* ``save_gptq``: uniform affine grids only, as the GPTQ tensors read by transformers/optimum, GPTQModel,
  vLLM and the exllama/Marlin kernels (``qweight``, ``qzeros``, ``scales``, ``g_idx``, ``bias``) plus a
  ``quantization_config``. The solver's own integer codes are packed; nothing is re-rounded.
* ``save_quantease``: everything (affine grids, per-row/per-group codebooks, sparse CSR outliers), b-bit
  packed bytes, with a ``quantease_format`` version in the safetensors metadata. float32 storage rebuilds
  ``QuantResult.weight`` bit for bit.

safetensors is imported inside the functions that need it (extras ``quantease[export]``); torch is imported
only when the caller passes torch tensors as pass-through tensors.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .packing import pack_axis0, pack_rows_bytes, unpack_axis0, unpack_rows_bytes, values_per_unit
from .result import QuantResult, SparseOutliers

__all__ = [
    "GPTQ_BITS",
    "QUANTEASE_FORMAT_VERSION",
    "gptq_tensors",
    "gptq_deviation",
    "save_gptq",
    "load_gptq",
    "load_gptq_results",
    "unpack_gptq_layer",
    "load_gptq_layer",
    "unpack_codes",
    "quantease_tensors",
    "save_quantease",
    "load_quantease",
    "load_quantease_results",
    "load_quantease_state_dict",
]

GPTQ_BITS = (2, 3, 4, 8)
QUANTEASE_FORMAT_VERSION = "1"
_FP16_MAX = float(np.finfo(np.float16).max)

LayerSpec = Union[QuantResult, Tuple[QuantResult, Optional[Any]]]


# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------


def _split_layer(name: str, spec: LayerSpec) -> Tuple[QuantResult, Optional[np.ndarray]]:
    """Accept either a QuantResult or a (QuantResult, bias-or-None) pair."""
    if isinstance(spec, QuantResult):
        return spec, None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], QuantResult):
        result, bias = spec
        return result, (None if bias is None else _to_numpy(bias, f"bias of layer {name!r}"))
    raise ValueError(f"layer {name!r} must be a QuantResult or a (QuantResult, bias) pair, got {type(spec).__name__}")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{what} must be a numeric array, got {type(x).__name__}")
    return arr


def _check_layout(name: str, r: QuantResult) -> Tuple[int, int, int]:
    """Validate the shapes every format relies on; returns (N, K, G)."""
    w = np.asarray(r.weight)
    if w.ndim != 2:
        raise ValueError(f"layer {name!r}: weight must be 2-D (out_features x in_features), got {w.shape}")
    n, k = w.shape
    codes = np.asarray(r.codes)
    if codes.shape != (n, k):
        raise ValueError(f"layer {name!r}: codes must be {(n, k)} to match the weight, got {codes.shape}")
    if codes.dtype.kind not in "iu":
        raise ValueError(f"layer {name!r}: codes must be integers, got {codes.dtype}")
    if not 1 <= r.bits <= 8:
        raise ValueError(f"layer {name!r}: bits must be in 1..8, got {r.bits}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << r.bits)):
        raise ValueError(
            f"layer {name!r}: codes must lie in [0, {(1 << r.bits) - 1}] for {r.bits} bits, "
            f"got [{codes.min()}, {codes.max()}]"
        )
    g_idx = np.asarray(r.g_idx)
    if g_idx.shape != (k,):
        raise ValueError(f"layer {name!r}: g_idx must have {k} entries (one per input column), got shape {g_idx.shape}")
    if r.codebook is not None:
        cb = np.asarray(r.codebook)
        ok = cb.shape == (n, 1 << r.bits) or (cb.ndim == 3 and cb.shape[0] == n and cb.shape[2] == 1 << r.bits)
        if not ok:
            raise ValueError(
                f"layer {name!r}: codebook must be ({n}, {1 << r.bits}) or ({n}, G, {1 << r.bits}), got {cb.shape}"
            )
        groups = 1 if cb.ndim == 2 else cb.shape[1]
    else:
        if r.scales is None or r.zeros is None:
            raise ValueError(f"layer {name!r}: an affine result needs scales and zeros (or a codebook)")
        s, z = np.asarray(r.scales), np.asarray(r.zeros)
        if s.ndim != 2 or s.shape[0] != n or z.shape != s.shape:
            raise ValueError(f"layer {name!r}: scales and zeros must both be ({n}, G), got {s.shape} and {z.shape}")
        groups = s.shape[1]
    if k and (g_idx.min() < 0 or g_idx.max() >= groups):
        raise ValueError(
            f"layer {name!r}: g_idx must lie in [0, {groups - 1}] for {groups} groups, "
            f"got [{g_idx.min()}, {g_idx.max()}]"
        )
    if r.outliers is not None and tuple(r.outliers.shape) != (n, k):
        raise ValueError(f"layer {name!r}: outliers must be {(n, k)}, got {tuple(r.outliers.shape)}")
    return n, k, groups


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _atomic_write_json(path: str, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def _write_safetensors(path: str, tensors: Dict[str, Any], metadata: Dict[str, str]) -> None:
    """Write NumPy (and, if any are given, torch) tensors to one file atomically (temp file + rename)."""
    if any(_is_torch(t) for t in tensors.values()):
        import torch
        from safetensors.torch import save as save_torch

        payload, storages = {}, set()
        for k, t in tensors.items():
            t = t.detach().cpu().contiguous() if _is_torch(t) else torch.from_numpy(np.ascontiguousarray(t))
            # safetensors refuses tensors that share memory (tied embeddings): give duplicates their own copy.
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages and t.numel():
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            payload[k] = t
        data = save_torch(payload, metadata=metadata)
    else:
        from safetensors.numpy import save as save_numpy

        data = save_numpy({k: np.ascontiguousarray(t) for k, t in tensors.items()}, metadata=metadata)
    _atomic_write_bytes(path, data)


def _read_safetensors(path: str, framework: str = "numpy") -> Tuple[Dict[str, Any], Dict[str, str]]:
    from safetensors import safe_open

    with safe_open(path, framework=framework) as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def _resolve_paths(path: Union[str, os.PathLike], filename: str) -> Tuple[str, str]:
    """A path ending in .safetensors is the tensor file (configs go next to it); anything else a directory."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        directory = os.path.dirname(path) or "."
        tensor_file = path
    else:
        directory, tensor_file = path, os.path.join(path, filename)
    os.makedirs(directory, exist_ok=True)
    return directory, tensor_file


def _passthrough(
    extra: Optional[Mapping[str, Any]], taken: Dict[str, Any], consumed: set, dtype: Optional[str]
) -> None:
    """Copy non-quantized tensors into ``taken``; keys consumed by a quantized layer are dropped."""
    if not extra:
        return
    for key, t in extra.items():
        if key in consumed:
            continue
        if key in taken:
            raise ValueError(f"pass-through tensor {key!r} collides with a tensor of a quantized layer")
        if dtype is not None:
            if _is_torch(t):
                import torch

                if t.is_floating_point():
                    t = t.to(getattr(torch, dtype))
            else:
                t = np.asarray(t)
                if t.dtype.kind == "f":
                    t = t.astype(dtype)
        elif not _is_torch(t):
            t = np.asarray(t)
        taken[key] = t


# ----------------------------------------------------------------------------------------------------------
# GPTQ packed format
#
# Per layer with prefix P (K = in_features, N = out_features, b bits, G groups):
#   P.qweight int32 [K*b/32, N]   codes packed along the input dimension, LSB first (3-bit: 32 values in
#                                 3 words, values 10 and 21 straddling words)
#   P.qzeros  int32 [G, N*b/32]   zero points packed the same way along the output dimension;
#                                 "gptq" (v1) stores z - 1, "gptq_v2" stores z
#   P.scales  fp16  [G, N]
#   P.g_idx   int32 [K]           group of each input column (non-monotonic with act-order, desc_act=true)
#   P.bias    fp16  [N]           when the layer has a bias
# Dequantization: W[o, j] = scales[g, o] * (q[j, o] - z[g, o]) with g = g_idx[j].
# ----------------------------------------------------------------------------------------------------------


def _check_gptq(name: str, r: QuantResult, fmt: str) -> Tuple[int, int, int]:
    if r.codebook is not None:
        raise ValueError(
            f"layer {name!r}: a non-uniform codebook cannot be written in the GPTQ format; use save_quantease"
        )
    if r.outliers is not None and r.outliers.nnz:
        raise ValueError(
            f"layer {name!r}: {r.outliers.nnz} sparse outliers cannot be written in the GPTQ format; use save_quantease"
        )
    if r.bits not in GPTQ_BITS:
        raise ValueError(f"layer {name!r}: the GPTQ format takes bits in {GPTQ_BITS}, got {r.bits}")
    n, k, groups = _check_layout(name, r)
    per = values_per_unit(r.bits)
    if k % per or n % per:
        raise ValueError(
            f"layer {name!r}: {r.bits}-bit GPTQ packing needs in_features and out_features "
            f"divisible by {per}, got ({n}, {k})"
        )
    expected = 1 if r.group_size in (-1, 0) or r.group_size >= k else -(-k // r.group_size)
    if groups != expected:
        raise ValueError(
            f"layer {name!r}: GPTQ loaders expect {expected} groups for in_features={k} and "
            f"group_size={r.group_size}, got {groups}"
        )
    z = np.asarray(r.zeros, dtype=np.float64)
    maxq = (1 << r.bits) - 1
    if not np.all(np.isfinite(z)) or np.any(z != np.round(z)) or z.min() < 0 or z.max() > maxq:
        raise ValueError(
            f"layer {name!r}: zero points must be integers in [0, {maxq}] for {r.bits} bits, "
            f"got values in [{z.min()}, {z.max()}]"
        )
    if fmt == "gptq" and np.any(z == 0):
        raise ValueError(
            f"layer {name!r}: the classic 'gptq' (v1) format stores z - 1 and cannot hold a "
            f"zero point of 0 ({int(np.sum(z == 0))} groups have z = 0); use "
            f"checkpoint_format='gptq_v2' or a symmetric grid"
        )
    s = np.asarray(r.scales, dtype=np.float64)
    if not np.all(np.isfinite(s)) or np.abs(s).max(initial=0.0) > _FP16_MAX:
        raise ValueError(
            f"layer {name!r}: scales must be finite and at most {_FP16_MAX} in magnitude to be stored as float16"
        )
    return n, k, groups


def _deployed_grid(r: QuantResult) -> np.ndarray:
    """What a loader rebuilds from the exported tensors: fp16 scales widened to float32, solver codes."""
    s16 = np.asarray(r.scales, dtype=np.float32).astype(np.float16).astype(np.float32)
    g = np.asarray(r.g_idx, dtype=np.int64)
    z = np.asarray(r.zeros, dtype=np.float32)
    return (s16[:, g] * (np.asarray(r.codes).astype(np.float32) - z[:, g])).astype(np.float32)


def gptq_deviation(result: QuantResult) -> float:
    """max |W_exported - result.weight| when the GPTQ export is dequantized in float32.

    0.0 exactly when the scales are float16-representable (solve with ``fp16_scales=True``) and the codes,
    zeros and scales reproduce ``result.weight``.
    """
    return float(np.max(np.abs(_deployed_grid(result) - np.asarray(result.weight, dtype=np.float32)), initial=0.0))


def gptq_tensors(
    result: QuantResult, prefix: str, *, bias: Any = None, checkpoint_format: str = "gptq"
) -> Dict[str, np.ndarray]:
    """The GPTQ tensors of one layer: {prefix.qweight, .qzeros, .scales, .g_idx[, .bias]} as NumPy arrays.

    checkpoint_format: "gptq" (v1, stores z - 1; refuses z = 0) or "gptq_v2" (stores z).
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    n, k, _ = _check_gptq(prefix, result, checkpoint_format)
    b = result.bits
    codes = np.asarray(result.codes)
    qweight = pack_axis0(codes.T, b).view(np.int32)  # [K*b/32, N]
    z = np.asarray(result.zeros).astype(np.int64)  # [N, G], validated integers
    stored = z - 1 if checkpoint_format == "gptq" else z
    qzeros = pack_axis0(stored, b).view(np.int32).T  # [G, N*b/32]
    out = {
        f"{prefix}.qweight": np.ascontiguousarray(qweight),
        f"{prefix}.qzeros": np.ascontiguousarray(qzeros),
        f"{prefix}.scales": np.ascontiguousarray(np.asarray(result.scales, dtype=np.float32).T.astype(np.float16)),
        f"{prefix}.g_idx": np.asarray(result.g_idx, dtype=np.int32).copy(),
    }
    if bias is not None:
        bias = _to_numpy(bias, f"bias of layer {prefix!r}").reshape(-1)
        if bias.shape != (n,):
            raise ValueError(f"layer {prefix!r}: bias must have {n} entries, got shape {bias.shape}")
        out[f"{prefix}.bias"] = bias.astype(np.float16)
    return out


def _acts_in_order(r: QuantResult) -> Tuple[bool, bool]:
    """(act-order was used, g_idx is the trivial j // group_size)."""
    k = r.weight.shape[1]
    perm = None if r.perm is None else np.asarray(r.perm)
    act = perm is not None and not np.array_equal(perm, np.arange(k))
    gs = k if r.group_size in (-1, 0) else r.group_size
    trivial = np.array_equal(np.asarray(r.g_idx), np.arange(k) // gs)
    return act, trivial


def save_gptq(
    path: Union[str, os.PathLike],
    layers: Mapping[str, LayerSpec],
    *,
    extra_tensors: Optional[Mapping[str, Any]] = None,
    config: Optional[dict] = None,
    checkpoint_format: Optional[str] = None,
    strict: bool = False,
    quantization_extra: Optional[dict] = None,
    passthrough_dtype: Optional[str] = None,
    filename: str = "model.safetensors",
) -> dict:
    """Write a GPTQ checkpoint: ``model.safetensors`` + ``quantize_config.json`` (+ ``config.json``).

    path: a directory (``filename`` is written inside it) or a path ending in ``.safetensors``.
    layers: {module name: QuantResult or (QuantResult, bias-or-None)}; affine grids, bits in {2, 3, 4, 8},
        no codebook, no outliers.
    extra_tensors: the non-quantized state-dict entries (NumPy arrays or torch tensors) written as they are
        (or cast to ``passthrough_dtype``, e.g. "float16"); ``name.weight`` / ``name.bias`` of a quantized
        layer are taken from ``layers`` instead (a ``name.bias`` found here is the layer's bias unless
        ``layers`` gives one).
    config: the model's config.json dict; written with ``quantization_config`` merged in. Without it, an
        existing ``config.json`` in the directory gets the ``quantization_config`` merged in.
    checkpoint_format: "gptq" (v1: stores z - 1, what every GPTQ loader reads) or "gptq_v2" (stores z;
        read by GPTQModel). Default: "gptq" when every layer is symmetric, else "gptq_v2".
    strict: raise instead of warning when float16 scales make the exported weights differ from
        ``result.weight`` (solve with fp16-rounded scales to make them equal).
    Returns the ``quantization_config`` dict.
    """
    if not layers:
        raise ValueError("layers is empty: nothing to export")
    parsed = {name: _split_layer(name, spec) for name, spec in layers.items()}
    results = [r for r, _ in parsed.values()]
    if checkpoint_format is None:
        checkpoint_format = "gptq" if all(r.sym for r in results) else "gptq_v2"
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    for attr in ("bits", "group_size"):
        values = sorted({getattr(r, attr) for r in results})
        if len(values) > 1:
            raise ValueError(f"every layer of a GPTQ checkpoint must share one {attr}, got {values}")
    bits, group_size = results[0].bits, results[0].group_size

    tensors: Dict[str, Any] = {}
    consumed: set = set()
    deviations: Dict[str, float] = {}
    any_act = any_dynamic = False
    for name, (r, bias) in parsed.items():
        if bias is None and extra_tensors is not None and f"{name}.bias" in extra_tensors:
            bias = _to_numpy(extra_tensors[f"{name}.bias"], f"{name}.bias")
        tensors.update(gptq_tensors(r, name, bias=bias, checkpoint_format=checkpoint_format))
        consumed.update({f"{name}.weight", f"{name}.bias"})
        act, trivial = _acts_in_order(r)
        any_act |= act or not trivial
        any_dynamic |= not trivial
        d = gptq_deviation(r)
        if d > 0:
            deviations[name] = d
    if deviations:
        worst = max(deviations, key=lambda name: deviations[name])
        msg = (
            f"{len(deviations)} of {len(parsed)} layers: float16 scales make the exported weights differ "
            f"from result.weight (largest: {deviations[worst]:.3g} in {worst!r}); quantize with "
            f"fp16_scales=True (quantease.rtn/gptq, or solver_kwargs of quantize_model) for a bit-exact "
            f"export"
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    _passthrough(extra_tensors, tensors, consumed, passthrough_dtype)

    damps = [r.damp for r in results if r.damp is not None]
    qc = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size if group_size > 0 else -1,
        # desc_act tells loaders to honour a non-monotonic g_idx; true whenever act-order was used.
        "desc_act": bool(any_act),
        "sym": all(r.sym for r in results),
        "damp_percent": float(min(damps)) if damps else 0.01,
        "static_groups": bool(any_act and not any_dynamic and group_size > 0),
        "true_sequential": True,
        "checkpoint_format": checkpoint_format,
        "meta": {"quantizer": ["quantease"], "methods": sorted({r.method for r in results})},
    }
    if quantization_extra:
        qc.update(quantization_extra)

    directory, tensor_file = _resolve_paths(path, filename)
    _write_safetensors(tensor_file, tensors, {"format": "pt", "producer": "quantease"})
    _atomic_write_json(os.path.join(directory, "quantize_config.json"), qc)
    config_path = os.path.join(directory, "config.json")
    if config is None and os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
    if config is not None:
        merged = dict(config)
        merged["quantization_config"] = qc
        _atomic_write_json(config_path, merged)
    return qc


def unpack_codes(qweight: np.ndarray, bits: int) -> np.ndarray:
    """GPTQ ``qweight`` int32 [K*b/32, N] -> codes uint8 [N, K] (QuantResult orientation)."""
    if bits not in GPTQ_BITS:
        raise ValueError(f"bits must be one of {GPTQ_BITS}, got {bits}")
    return np.ascontiguousarray(unpack_axis0(np.asarray(qweight), bits).T)


def unpack_gptq_layer(
    tensors: Mapping[str, Any],
    prefix: str,
    *,
    checkpoint_format: str = "gptq",
    group_size: Optional[int] = None,
    sym: Optional[bool] = None,
) -> Tuple[QuantResult, Optional[np.ndarray]]:
    """Rebuild (QuantResult, bias) of one layer from GPTQ tensors (NumPy arrays, e.g. a safetensors load).

    bits are inferred from qweight's shape and g_idx; the weight is scales * (codes - zeros) in float32
    (fp16 scales widened). group_size defaults to the largest group's size (-1 with one group); sym to
    "every zero point is 2^(bits-1)".
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    try:
        qweight, qzeros, scales, g_idx = (
            np.asarray(_to_numpy(tensors[f"{prefix}.{t}"], f"{prefix}.{t}"))
            for t in ("qweight", "qzeros", "scales", "g_idx")
        )
    except KeyError as e:
        raise ValueError(f"layer {prefix!r}: missing tensor {e.args[0]!r}") from None
    k = g_idx.shape[0]
    rows, n = qweight.shape
    if k == 0 or (rows * 32) % k or (rows * 32 // k) not in GPTQ_BITS:
        raise ValueError(
            f"layer {prefix!r}: qweight {qweight.shape} does not match g_idx of {k} columns "
            f"for any bit width in {GPTQ_BITS}"
        )
    bits = rows * 32 // k
    groups = scales.shape[0]
    if scales.shape != (groups, n) or qzeros.shape != (groups, n * bits // 32):
        raise ValueError(
            f"layer {prefix!r}: scales {scales.shape} and qzeros {qzeros.shape} do not match "
            f"{groups} groups x {n} outputs at {bits} bits"
        )
    codes = unpack_codes(qweight, bits)  # [N, K]
    z = unpack_axis0(np.ascontiguousarray(qzeros.T), bits).astype(np.int64)  # [N, G]
    if checkpoint_format == "gptq":
        z = z + 1
    zeros = np.ascontiguousarray(z, dtype=np.float32)
    s = np.ascontiguousarray(scales.astype(np.float32).T)
    g = g_idx.astype(np.int32)
    if group_size is None:
        group_size = -1 if groups == 1 else int(np.bincount(g, minlength=groups).max())
    if sym is None:
        sym = bool(np.all(z == (1 << (bits - 1))))
    r = QuantResult(
        weight=np.empty((n, k), np.float32),
        codes=codes,
        scales=s,
        zeros=zeros,
        g_idx=g,
        perm=None,
        loss=None,
        damp=None,
        bits=bits,
        group_size=group_size,
        sym=sym,
        method="gptq-checkpoint",
        seconds=0.0,
    )
    r.weight = r.grid_weight()
    bias = tensors.get(f"{prefix}.bias")
    return r, (None if bias is None else _to_numpy(bias, f"{prefix}.bias"))


def load_gptq_layer(tensors: Mapping[str, Any], prefix: str, *, checkpoint_format: str = "gptq") -> np.ndarray:
    """Dequantized weight (N x K, float32) of one layer from GPTQ tensors."""
    return unpack_gptq_layer(tensors, prefix, checkpoint_format=checkpoint_format)[0].weight


def _gptq_dir_config(path: Union[str, os.PathLike]) -> Tuple[str, dict]:
    path = os.fspath(path)
    directory, tensor_file = (
        (os.path.dirname(path) or ".", path)
        if path.endswith(".safetensors")
        else (path, os.path.join(path, "model.safetensors"))
    )
    qc: dict = {}
    for fname in ("quantize_config.json", "config.json"):
        p = os.path.join(directory, fname)
        if os.path.exists(p):
            with open(p) as f:
                d = json.load(f)
            qc = d.get("quantization_config", d) if fname == "config.json" else d
            break
    return tensor_file, qc


def load_gptq_results(path: Union[str, os.PathLike]) -> Dict[str, Tuple[QuantResult, Optional[np.ndarray]]]:
    """{layer name: (QuantResult, bias)} for every quantized layer of a GPTQ checkpoint written here or by
    another GPTQ tool (reads checkpoint_format / group_size / sym from quantize_config.json)."""
    tensor_file, qc = _gptq_dir_config(path)
    tensors, _ = _read_safetensors(tensor_file)
    fmt = qc.get("checkpoint_format", "gptq")
    names = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    gs = qc.get("group_size")
    return {
        n: unpack_gptq_layer(
            tensors, n, checkpoint_format=fmt, sym=qc.get("sym"), group_size=None if gs is None else int(gs)
        )
        for n in names
    }


def load_gptq(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """{layer name: dequantized float32 weight (N x K)} of a GPTQ checkpoint."""
    return {n: r.weight for n, (r, _) in load_gptq_results(path).items()}


# ----------------------------------------------------------------------------------------------------------
# quantease format, version "1"
#
# safetensors metadata: "format": "pt", "quantease_format": "1",
#   "quantease_layers": JSON {name: {"shape": [N, K], "bits", "group_size", "sym", "method", "grid":
#                                    "affine" | "codebook", "loss", "damp", "iters", "seconds"}}
# Per layer with prefix P:
#   P.codes              uint8 [N, ceil(K*b/8)]  each row an LSB-first bitstream of b-bit codes (4-bit: two
#                                                codes per byte, even column in the low nibble), zero-padded
#   P.g_idx              int32 [K]
#   P.perm               int64 [K]                only when the solver reported an act-order permutation
#   P.scales, P.zeros    fp16|fp32 [N, G]         affine grid:  W = scales[:, g] * (codes - zeros[:, g])
#   P.codebook           fp16|fp32 [N, 2^b] or [N, G, 2^b]    codebook grid: W = codebook[o, (g,) code]
#   P.outliers.indptr    int64 [N+1]              CSR of the full-precision sparse part, added to the grid
#   P.outliers.indices   int32 [nnz]
#   P.outliers.values    fp16|fp32 [nnz]
#   P.bias               as given                 when the layer has a bias
# Dense weight = grid part + outliers, computed in float32 exactly as QuantResult.dense_weight().
# ----------------------------------------------------------------------------------------------------------

_OWN_SUFFIXES = (
    "codes",
    "g_idx",
    "perm",
    "scales",
    "zeros",
    "codebook",
    "outliers.indptr",
    "outliers.indices",
    "outliers.values",
)


def _float_arrays(r: QuantResult) -> list:
    arrs = [r.codebook] if r.codebook is not None else [r.scales, r.zeros]
    if r.outliers is not None:
        arrs.append(r.outliers.values)
    return [np.asarray(a, dtype=np.float32) for a in arrs]


def _fp16_exact(a: np.ndarray) -> bool:
    return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a, equal_nan=True))


def quantease_tensors(
    result: QuantResult, prefix: str, *, bias: Any = None, dtype: str = "auto"
) -> Tuple[Dict[str, np.ndarray], dict]:
    """The tensors and metadata entry of one layer in the quantease format.

    dtype: "float32" (exact), "float16" (compact, rounds), or "auto": float16 when every stored float
    (scales, zeros, codebook, outlier values) is float16-representable, else float32.
    """
    n, k, _ = _check_layout(prefix, result)
    if dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'float16' or 'float32', got {dtype!r}")
    floats = _float_arrays(result)
    if dtype == "auto":
        dtype = "float16" if all(_fp16_exact(a) for a in floats) else "float32"
    if dtype == "float16" and any(np.abs(a).max(initial=0.0) > _FP16_MAX for a in floats):
        raise ValueError(
            f"layer {prefix!r}: values beyond {_FP16_MAX} cannot be stored as float16; use dtype='float32'"
        )
    fdt = np.dtype(dtype)
    out = {
        f"{prefix}.codes": pack_rows_bytes(np.asarray(result.codes), result.bits),
        f"{prefix}.g_idx": np.asarray(result.g_idx, dtype=np.int32).copy(),
    }
    if result.perm is not None:
        out[f"{prefix}.perm"] = np.asarray(result.perm, dtype=np.int64).copy()
    if result.codebook is not None:
        out[f"{prefix}.codebook"] = np.asarray(result.codebook, dtype=np.float32).astype(fdt)
        grid = "codebook"
    else:
        out[f"{prefix}.scales"] = np.asarray(result.scales, dtype=np.float32).astype(fdt)
        out[f"{prefix}.zeros"] = np.asarray(result.zeros, dtype=np.float32).astype(fdt)
        grid = "affine"
    if result.outliers is not None:
        o = result.outliers
        out[f"{prefix}.outliers.indptr"] = np.asarray(o.indptr, dtype=np.int64).copy()
        out[f"{prefix}.outliers.indices"] = np.asarray(o.indices, dtype=np.int32).copy()
        out[f"{prefix}.outliers.values"] = np.asarray(o.values, dtype=np.float32).astype(fdt)
        if out[f"{prefix}.outliers.indptr"].shape != (n + 1,):
            raise ValueError(
                f"layer {prefix!r}: outliers.indptr must have {n + 1} entries, "
                f"got {out[f'{prefix}.outliers.indptr'].shape}"
            )
    if bias is not None:
        bias = _to_numpy(bias, f"bias of layer {prefix!r}").reshape(-1)
        if bias.shape != (n,):
            raise ValueError(f"layer {prefix!r}: bias must have {n} entries, got shape {bias.shape}")
        out[f"{prefix}.bias"] = bias

    def num(x):
        return None if x is None else float(x)

    meta = {
        "shape": [n, k],
        "bits": int(result.bits),
        "group_size": int(result.group_size),
        "sym": bool(result.sym),
        "method": str(result.method),
        "grid": grid,
        "dtype": dtype,
        "loss": num(result.loss),
        "damp": num(result.damp),
        "iters": None if result.iters is None else int(result.iters),
        "seconds": float(result.seconds),
    }
    return out, meta


def save_quantease(
    path: Union[str, os.PathLike],
    layers: Mapping[str, LayerSpec],
    *,
    extra_tensors: Optional[Mapping[str, Any]] = None,
    dtype: str = "auto",
    strict: bool = False,
    passthrough_dtype: Optional[str] = None,
) -> Dict[str, float]:
    """Write layers (affine, codebook, with or without outliers) to one safetensors file, format "1".

    layers / extra_tensors as in save_gptq. dtype: see quantease_tensors ("auto" is exact and uses float16
    wherever that is lossless). With dtype="float16" a layer whose rebuilt weight differs from
    result.weight is reported by a warning (or a ValueError when strict=True).
    Returns {layer name: max |rebuilt - result.weight|} (all 0.0 for exact storage).
    """
    if not layers:
        raise ValueError("layers is empty: nothing to export")
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tensors: Dict[str, Any] = {}
    metas: Dict[str, dict] = {}
    consumed: set = set()
    deviations: Dict[str, float] = {}
    for name, spec in layers.items():
        r, bias = _split_layer(name, spec)
        if bias is None and extra_tensors is not None and f"{name}.bias" in extra_tensors:
            bias = extra_tensors[f"{name}.bias"]
        t, meta = quantease_tensors(r, name, bias=bias, dtype=dtype)
        tensors.update(t)
        metas[name] = meta
        consumed.update({f"{name}.weight", f"{name}.bias"})
        rebuilt = _result_from_tensors(t, name, meta).weight
        deviations[name] = float(np.max(np.abs(rebuilt - np.asarray(r.weight, np.float32)), initial=0.0))
    bad = {k: v for k, v in deviations.items() if v > 0}
    if bad:
        worst = max(bad, key=lambda name: bad[name])
        msg = (
            f"{len(bad)} of {len(layers)} layers are rebuilt with an error (largest: {bad[worst]:.3g} in "
            f"{worst!r}); use dtype='float32' or 'auto' for an exact file"
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    _passthrough(extra_tensors, tensors, consumed, passthrough_dtype)
    metadata = {
        "format": "pt",
        "producer": "quantease",
        "quantease_format": QUANTEASE_FORMAT_VERSION,
        "quantease_layers": json.dumps(metas, sort_keys=True),
    }
    _write_safetensors(path, tensors, metadata)
    return deviations


def _result_from_tensors(t: Mapping[str, np.ndarray], name: str, meta: dict) -> QuantResult:
    n, k = meta["shape"]
    bits = int(meta["bits"])
    try:
        codes = unpack_rows_bytes(np.asarray(t[f"{name}.codes"]), bits, k)
        g_idx = np.asarray(t[f"{name}.g_idx"], dtype=np.int32)
        perm = t.get(f"{name}.perm")
        codebook = scales = zeros = outliers = None
        if meta["grid"] == "codebook":
            codebook = np.asarray(t[f"{name}.codebook"]).astype(np.float32)
        else:
            scales = np.asarray(t[f"{name}.scales"]).astype(np.float32)
            zeros = np.asarray(t[f"{name}.zeros"]).astype(np.float32)
        if f"{name}.outliers.indptr" in t:
            outliers = SparseOutliers(
                np.asarray(t[f"{name}.outliers.indptr"], dtype=np.int64),
                np.asarray(t[f"{name}.outliers.indices"], dtype=np.int32),
                np.asarray(t[f"{name}.outliers.values"]).astype(np.float32),
                (n, k),
            )
    except KeyError as e:
        raise ValueError(f"layer {name!r}: missing tensor {e.args[0]!r}") from None
    r = QuantResult(
        weight=np.empty((n, k), np.float32),
        codes=codes,
        scales=scales,
        zeros=zeros,
        g_idx=g_idx,
        perm=None if perm is None else np.asarray(perm, dtype=np.int64),
        loss=meta.get("loss"),
        damp=meta.get("damp"),
        bits=bits,
        group_size=int(meta["group_size"]),
        sym=bool(meta["sym"]),
        method=str(meta["method"]),
        seconds=float(meta.get("seconds", 0.0)),
        iters=meta.get("iters"),
        outliers=outliers,
        outlier_fraction=None if outliers is None else outliers.nnz / max(n * k, 1),
        codebook=codebook,
    )
    r.weight = r.dense_weight()
    return r


def _read_quantease(path: Union[str, os.PathLike], framework: str = "numpy"):
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    tensors, meta = _read_safetensors(path, framework)
    version = meta.get("quantease_format")
    if version is None:
        raise ValueError(f"{path} is not a quantease-format file (no 'quantease_format' in its metadata)")
    if version != QUANTEASE_FORMAT_VERSION:
        raise ValueError(f"{path} has quantease_format {version!r}; this version reads {QUANTEASE_FORMAT_VERSION!r}")
    return tensors, json.loads(meta["quantease_layers"])


def load_quantease_results(path: Union[str, os.PathLike]) -> Dict[str, Tuple[QuantResult, Optional[np.ndarray]]]:
    """{layer name: (QuantResult, bias)}: codes, grid, outliers and solver figures as saved; ``weight`` is
    rebuilt (bit-exact with float32 storage). The pair can be passed back to save_quantease / save_gptq."""
    tensors, layers = _read_quantease(path)
    return {
        name: (_result_from_tensors(tensors, name, meta), tensors.get(f"{name}.bias")) for name, meta in layers.items()
    }


def load_quantease(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """{layer name: dense float32 weight (N x K)} rebuilt from a quantease-format file."""
    return {name: r.weight for name, (r, _) in load_quantease_results(path).items()}


def load_quantease_state_dict(path: Union[str, os.PathLike], framework: str = "numpy") -> Dict[str, Any]:
    """A dense state dict: ``name.weight`` (float32) and ``name.bias`` for every quantized layer plus every
    pass-through tensor, as NumPy arrays (framework="numpy") or torch tensors (framework="pt", needed for
    bfloat16 pass-through tensors)."""
    tensors, layers = _read_quantease(path, framework)
    if framework == "pt":
        np_tensors = {
            k: tensors[k].numpy() for n in layers for k in (f"{n}.{x}" for x in _OWN_SUFFIXES) if k in tensors
        }
    else:
        np_tensors = tensors
    own = {f"{name}.{suffix}" for name in layers for suffix in _OWN_SUFFIXES}
    out: Dict[str, Any] = {}
    for name, meta in layers.items():
        weight = _result_from_tensors(np_tensors, name, meta).weight
        if framework == "pt":
            import torch

            out[f"{name}.weight"] = torch.from_numpy(weight)
        else:
            out[f"{name}.weight"] = weight
    for key, t in tensors.items():
        if key not in own:
            out[key] = t
    return out
