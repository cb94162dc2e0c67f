"""quantease's own format (version "1"): everything a solver produces -- affine grids, per-row/per-group
codebooks, sparse CSR outliers -- as b-bit packed bytes in one safetensors file. float32 storage rebuilds
``QuantResult.weight`` bit for bit.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..packing import pack_rows_bytes, unpack_rows_bytes
from ..result import QuantResult, SparseOutliers
from .files import add_passthrough, read_safetensors, tensor_file, write_safetensors
from .layers import FP16_MAX, LayerSpec, check_layout, split_layer, to_numpy

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

QUANTEASE_FORMAT_VERSION = "1"


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
    n, k, _ = check_layout(prefix, result)
    if dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'float16' or 'float32', got {dtype!r}")
    floats = _float_arrays(result)
    if dtype == "auto":
        dtype = "float16" if all(_fp16_exact(a) for a in floats) else "float32"
    if dtype == "float16" and any(np.abs(a).max(initial=0.0) > FP16_MAX for a in floats):
        raise ValueError(f"layer {prefix!r}: values beyond {FP16_MAX} cannot be stored as float16; use dtype='float32'")
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
        bias = to_numpy(bias, f"bias of layer {prefix!r}").reshape(-1)
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

    path: a path ending in ``.safetensors`` (or an existing file), else a directory that gets
    ``model.safetensors``.

    layers / extra_tensors as in save_gptq. dtype: see quantease_tensors ("auto" is exact and uses float16
    wherever that is lossless). With dtype="float16" a layer whose rebuilt weight differs from
    result.weight is reported by a warning (or a ValueError when strict=True).
    Returns {layer name: max |rebuilt - result.weight|} (all 0.0 for exact storage).
    """
    if not layers:
        raise ValueError("layers is empty: nothing to export")
    _, file = tensor_file(path, create=True)
    tensors: Dict[str, Any] = {}
    metas: Dict[str, dict] = {}
    consumed: set = set()
    deviations: Dict[str, float] = {}
    for name, spec in layers.items():
        r, bias = split_layer(name, spec)
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
    add_passthrough(extra_tensors, tensors, consumed, passthrough_dtype)
    metadata = {
        "format": "pt",
        "producer": "quantease",
        "quantease_format": QUANTEASE_FORMAT_VERSION,
        "quantease_layers": json.dumps(metas, sort_keys=True),
    }
    write_safetensors(file, tensors, metadata)
    return deviations


def _result_from_tensors(t: Mapping[str, np.ndarray], name: str, meta: dict) -> QuantResult:
    try:
        n, k = (int(x) for x in meta["shape"])
        bits = int(meta["bits"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"layer {name!r}: its metadata lacks a valid shape or bits: {meta!r}") from None
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
    _check_stored(name, n, k, perm, [a for a in (scales, zeros, codebook) if a is not None], outliers)
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
    check_layout(name, r)  # shapes, codes and g_idx in range
    r.weight = r.dense_weight()
    return r


def _check_stored(name: str, n: int, k: int, perm, floats: list, outliers: Optional[SparseOutliers]) -> None:
    """What check_layout does not see in a loaded layer: finite grids, a permutation, a valid CSR."""
    if any(not np.isfinite(a).all() for a in floats):
        raise ValueError(f"layer {name!r}: its scales, zeros or codebook contain NaN or Inf")
    if perm is not None and not np.array_equal(np.sort(np.asarray(perm)), np.arange(k)):
        raise ValueError(f"layer {name!r}: perm must be a permutation of its {k} columns")
    if outliers is not None:
        p, idx = outliers.indptr, outliers.indices
        if (
            p.shape != (n + 1,)
            or p[0] != 0
            or (np.diff(p) < 0).any()
            or p[-1] != len(idx)
            or len(outliers.values) != len(idx)
            or (len(idx) and (idx.min() < 0 or idx.max() >= k))
            or not np.isfinite(outliers.values).all()
        ):
            raise ValueError(
                f"layer {name!r}: outliers are not a valid CSR matrix of shape {(n, k)} with finite values"
            )


def _read_quantease(path: Union[str, os.PathLike], framework: str = "numpy"):
    """(tensors, {layer: metadata entry}) of a quantease-format file, or of a directory of shards listed by
    ``model.safetensors.index.json`` (quantease.offload writes one shard per block, each with its layers)."""
    directory, file = tensor_file(path)
    index = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.exists(file) and os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        tensors: Dict[str, Any] = {}
        layers: Dict[str, dict] = {}
        for name in files:
            t, m = _read_quantease_file(os.path.join(directory, name), framework)
            tensors.update(t)
            layers.update(m)
        return tensors, layers
    return _read_quantease_file(file, framework)


def _read_quantease_file(file: str, framework: str):
    tensors, meta = read_safetensors(file, framework)
    version = meta.get("quantease_format")
    if version is None:
        raise ValueError(f"{file} is not a quantease-format file (no 'quantease_format' in its metadata)")
    if version != QUANTEASE_FORMAT_VERSION:
        raise ValueError(f"{file} has quantease_format {version!r}; this version reads {QUANTEASE_FORMAT_VERSION!r}")
    try:
        return tensors, json.loads(meta["quantease_layers"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: its 'quantease_layers' metadata is missing or not JSON ({err})") from None


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
