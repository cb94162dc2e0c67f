"""GPTQ checkpoints: uniform affine grids packed as the tensors GPTQ loaders read (``qweight``, ``qzeros``,
``scales``, ``g_idx``, ``bias``) plus a ``quantization_config``. The solver's own integer codes are packed; nothing
is re-rounded. What GPTQModel's and transformers' default CPU paths do with each variant, and what save_gptq
writes or warns about for them: quantease.export.gptq_consumers.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..packing import pack_axis0, unpack_axis0, values_per_unit
from ..result import QuantResult
from .files import (
    PASSTHROUGH_DTYPES,
    add_passthrough,
    atomic_write_json,
    read_safetensors,
    tensor_file,
    write_safetensors,
)
from .gptq_consumers import GPTQ_CONSUMERS, GPTQConsumerWarning, gptq_consumer_notes
from .layers import FP16_MAX, LayerSpec, check_layout, is_torch, split_layer, to_numpy

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

GPTQ_BITS = (2, 3, 4, 8)


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
    n, k, groups = check_layout(name, r)
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
    if not np.all(np.isfinite(s)) or np.abs(s).max(initial=0.0) > FP16_MAX:
        raise ValueError(
            f"layer {name!r}: scales must be finite and at most {FP16_MAX} in magnitude to be stored as float16"
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
        bias = to_numpy(bias, f"bias of layer {prefix!r}").reshape(-1)
        if bias.shape != (n,):
            raise ValueError(f"layer {prefix!r}: bias must have {n} entries, got shape {bias.shape}")
        out[f"{prefix}.bias"] = bias.astype(np.float16)
    return out


def acts_in_order(r: QuantResult) -> Tuple[bool, bool]:
    """(act-order was used, g_idx is the trivial j // group_size)."""
    k = r.weight.shape[1]
    perm = None if r.perm is None else np.asarray(r.perm)
    act = perm is not None and not np.array_equal(perm, np.arange(k))
    gs = k if r.group_size in (-1, 0) else r.group_size
    trivial = np.array_equal(np.asarray(r.g_idx), np.arange(k) // gs)
    return act, trivial


@dataclass
class GPTQExport:
    """What save_gptq wrote.

    quantization_config: the dict written to quantize_config.json and config.json.
    tensor_file: the safetensors file; file_bytes its size.
    fp16_bytes: the size of the same model stored in float16 (quantized layers as dense N x K weights, tied
        weights once): the checkpoint a GPTQ file replaces.
    consumer_warnings: {consumer ("gptqmodel", "transformers"): why its default CPU path refuses the file or
        computes wrong outputs}; each was also issued as a GPTQConsumerWarning.
    deviations: {layer: max |exported weight - result.weight|} for the layers whose float16 scales differ from
        the solver's (empty with fp16_scales=True).
    """

    quantization_config: dict
    tensor_file: str
    file_bytes: int
    fp16_bytes: int
    consumer_warnings: Dict[str, str] = field(default_factory=dict)
    deviations: Dict[str, float] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        """file_bytes / fp16_bytes."""
        return self.file_bytes / self.fp16_bytes if self.fp16_bytes else float("nan")


def _serving_dtype(config: Optional[dict], passthrough_dtype: Optional[str]) -> Optional[str]:
    """ "auto": the dtype config.json declares when it is float16 or bfloat16, else float16."""
    if passthrough_dtype != "auto":
        return passthrough_dtype
    declared = str((config or {}).get("dtype") or (config or {}).get("torch_dtype") or "").replace("torch.", "")
    return declared if declared in ("float16", "bfloat16") else "float16"


def _drop_tied_embeddings(tensors: Dict[str, Any], passthrough: list, config: Optional[dict]) -> None:
    """With ``tie_word_embeddings``, keep one copy of the embedding matrix: a later pass-through tensor of shape
    (vocab_size, ...) equal to an earlier one is the tied output embedding, which loaders re-tie."""
    if not config or not config.get("tie_word_embeddings") or "vocab_size" not in config:
        return
    kept: list = []
    for key in passthrough:
        t = tensors[key]
        if len(t.shape) != 2 or t.shape[0] != config["vocab_size"]:
            continue
        values = to_numpy(t, key)
        if any(other.shape == values.shape and np.array_equal(other, values) for other in kept):
            del tensors[key]
        else:
            kept.append(values)


def _fp16_bytes(tensors: Mapping[str, Any], layers: Mapping[str, Tuple[QuantResult, Any]]) -> int:
    """Bytes of the model as a float16 checkpoint: dense quantized layers, pass-through floats in float16."""
    own = {f"{name}.{suffix}" for name in layers for suffix in ("qweight", "qzeros", "scales", "g_idx")}
    total = sum(2 * r.weight.size for r, _ in layers.values())
    for key, t in tensors.items():
        if key in own:
            continue
        floating = t.is_floating_point() if is_torch(t) else np.asarray(t).dtype.kind == "f"
        itemsize = 2 if floating else (t.element_size() if is_torch(t) else np.asarray(t).itemsize)
        total += itemsize * int(np.prod(tuple(t.shape)))
    return int(total)


def save_gptq(
    path: Union[str, os.PathLike],
    layers: Mapping[str, LayerSpec],
    *,
    extra_tensors: Optional[Mapping[str, Any]] = None,
    config: Optional[dict] = None,
    checkpoint_format: Optional[str] = None,
    strict: bool = False,
    quantization_extra: Optional[dict] = None,
    passthrough_dtype: Optional[str] = "auto",
    filename: str = "model.safetensors",
) -> GPTQExport:
    """Write a GPTQ checkpoint: ``model.safetensors`` + ``quantize_config.json`` (+ ``config.json``).

    path: a directory (``filename`` is written inside it), or a path ending in ``.safetensors`` or naming a file.
    layers: {module name: QuantResult or (QuantResult, bias-or-None)}; affine grids, bits in {2, 3, 4, 8},
        no codebook, no outliers.
    extra_tensors: the non-quantized state-dict entries (NumPy arrays or torch tensors, e.g.
        ``model.state_dict()``); ``name.weight`` / ``name.bias`` of a quantized layer are taken from ``layers``
        instead (a ``name.bias`` found here is the layer's bias unless ``layers`` gives one). With
        ``tie_word_embeddings`` in the config, the tied output embedding is written once, as HF checkpoints do.
    config: the model's config.json dict; written with ``quantization_config`` merged in and ``dtype`` set to
        the pass-through dtype. Without it, an existing ``config.json`` in the directory is updated.
    checkpoint_format: "gptq" (v1: stores z - 1) or "gptq_v2" (stores z). Default: "gptq" when the grids are
        symmetric (every zero point 2^(bits-1)): v1 symmetric files load everywhere; else "gptq_v2", because
        GPTQModel refuses asymmetric v1 files that it did not write.
    strict: raise instead of warning when float16 scales make the exported weights differ from
        ``result.weight`` (solve with fp16-rounded scales to make them equal).
    passthrough_dtype: dtype of the floating pass-through tensors: "auto" (the config's dtype when float16 or
        bfloat16, else float16, the serving dtype GPTQ tools write), "float16", "bfloat16", "float32", or None
        (as given).
    Returns a GPTQExport: the quantization_config, the file size against the float16 model's, and the
    consumers warned about (see GPTQ_CONSUMERS and tests/test_consumers.py for what was verified).
    """
    if not layers:
        raise ValueError("layers is empty: nothing to export")
    parsed = {name: split_layer(name, spec) for name, spec in layers.items()}
    results = [r for r, _ in parsed.values()]
    if checkpoint_format not in (None, "gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    if passthrough_dtype not in ("auto", None, *PASSTHROUGH_DTYPES):
        raise ValueError(
            f"passthrough_dtype must be 'auto', one of {PASSTHROUGH_DTYPES} or None, got {passthrough_dtype!r}"
        )
    for attr in ("bits", "group_size"):
        values = sorted({getattr(r, attr) for r in results})
        if len(values) > 1:
            raise ValueError(f"every layer of a GPTQ checkpoint must share one {attr}, got {values}")
    bits, group_size = results[0].bits, results[0].group_size
    # What loaders call symmetric: every zero point at the grid's midpoint (EasyQuant's symmetric grid is not).
    symmetric = all(r.zeros is not None and np.all(np.asarray(r.zeros) == 1 << (bits - 1)) for r in results)
    if checkpoint_format is None:
        checkpoint_format = "gptq" if symmetric else "gptq_v2"

    tensors: Dict[str, Any] = {}
    consumed: set = set()
    deviations: Dict[str, float] = {}
    any_act = any_dynamic = False
    for name, (r, bias) in parsed.items():
        if bias is None and extra_tensors is not None and f"{name}.bias" in extra_tensors:
            bias = to_numpy(extra_tensors[f"{name}.bias"], f"{name}.bias")
        tensors.update(gptq_tensors(r, name, bias=bias, checkpoint_format=checkpoint_format))
        consumed.update({f"{name}.weight", f"{name}.bias"})
        act, trivial = acts_in_order(r)
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
    backend, consumer_warnings = gptq_consumer_notes(bits, group_size, symmetric, checkpoint_format)
    for consumer, why in consumer_warnings.items():
        warnings.warn(f"{GPTQ_CONSUMERS[consumer]}: {why}", GPTQConsumerWarning, stacklevel=2)

    directory, file = tensor_file(path, filename, create=True)
    if config is None and os.path.exists(os.path.join(directory, "config.json")):
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
    serving_dtype = _serving_dtype(config, passthrough_dtype)
    before = set(tensors)
    add_passthrough(extra_tensors, tensors, consumed, serving_dtype)
    _drop_tied_embeddings(tensors, [k for k in tensors if k not in before], config)

    damps = [r.damp for r in results if r.damp is not None]
    qc = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size if group_size > 0 else -1,
        # desc_act tells loaders to honour a non-monotonic g_idx; true whenever act-order was used.
        "desc_act": bool(any_act),
        "sym": symmetric,
        "damp_percent": float(min(damps)) if damps else 0.01,
        "static_groups": bool(any_act and not any_dynamic and group_size > 0),
        "true_sequential": True,
        "checkpoint_format": checkpoint_format,
        "meta": {"quantizer": ["quantease"], "methods": sorted({r.method for r in results})},
    }
    if backend is not None:
        qc["backend"] = backend
    if quantization_extra:
        qc.update(quantization_extra)

    write_safetensors(file, tensors, {"format": "pt", "producer": "quantease"})
    atomic_write_json(os.path.join(directory, "quantize_config.json"), qc)
    if config is not None:
        merged = dict(config)
        merged["quantization_config"] = qc
        if serving_dtype is not None:
            merged["dtype"] = serving_dtype
            if "torch_dtype" in merged:
                merged["torch_dtype"] = serving_dtype
        atomic_write_json(os.path.join(directory, "config.json"), merged)
    return GPTQExport(
        quantization_config=qc,
        tensor_file=file,
        file_bytes=os.path.getsize(file),
        fp16_bytes=_fp16_bytes(tensors, parsed),
        consumer_warnings=consumer_warnings,
        deviations=deviations,
    )


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
    expected_bits: Optional[int] = None,
) -> Tuple[QuantResult, Optional[np.ndarray]]:
    """Rebuild (QuantResult, bias) of one layer from GPTQ tensors (NumPy arrays, e.g. a safetensors load).

    bits are inferred from qweight's shape and g_idx (ValueError when ``expected_bits``, the config's, says
    otherwise); the weight is scales * (codes - zeros) in float32 (fp16 scales widened). group_size defaults
    to the largest group's size (-1 with one group); sym to "every zero point is 2^(bits-1)". Tensors of the
    wrong kind or shape, g_idx outside the groups and non-finite scales raise ValueError naming the layer.
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    try:
        qweight, qzeros, scales, g_idx = (
            np.asarray(to_numpy(tensors[f"{prefix}.{t}"], f"{prefix}.{t}"))
            for t in ("qweight", "qzeros", "scales", "g_idx")
        )
    except KeyError as e:
        raise ValueError(f"layer {prefix!r}: missing tensor {e.args[0]!r}") from None
    for t, a, kinds, ndim in (
        ("qweight", qweight, "iu", 2),
        ("qzeros", qzeros, "iu", 2),
        ("scales", scales, "f", 2),
        ("g_idx", g_idx, "iu", 1),
    ):
        if a.dtype.kind not in kinds or a.ndim != ndim:
            kind = "float" if kinds == "f" else "integer"
            raise ValueError(
                f"layer {prefix!r}: {t} must be a {ndim}-D {kind} tensor, got {a.dtype} with shape {a.shape}"
            )
    k = g_idx.shape[0]
    rows, n = qweight.shape
    if k == 0 or (rows * 32) % k or (rows * 32 // k) not in GPTQ_BITS:
        raise ValueError(
            f"layer {prefix!r}: qweight {qweight.shape} does not match g_idx of {k} columns "
            f"for any bit width in {GPTQ_BITS}"
        )
    bits = rows * 32 // k
    if expected_bits is not None and bits != expected_bits:
        raise ValueError(
            f"layer {prefix!r}: the quantization config says bits={expected_bits}, but qweight "
            f"{qweight.shape} with g_idx of {k} columns holds {bits}-bit codes"
        )
    if not np.isfinite(scales).all():
        raise ValueError(f"layer {prefix!r}: scales contain NaN or Inf")
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
    check_layout(prefix, r)  # g_idx within the groups
    r.weight = r.grid_weight()
    bias = tensors.get(f"{prefix}.bias")
    return r, (None if bias is None else to_numpy(bias, f"{prefix}.bias"))


def load_gptq_layer(tensors: Mapping[str, Any], prefix: str, *, checkpoint_format: str = "gptq") -> np.ndarray:
    """Dequantized weight (N x K, float32) of one layer from GPTQ tensors."""
    return unpack_gptq_layer(tensors, prefix, checkpoint_format=checkpoint_format)[0].weight


def _gptq_dir_config(path: Union[str, os.PathLike]) -> Tuple[str, dict]:
    """The tensor file of a GPTQ checkpoint and its quantization config (from quantize_config.json, else
    config.json's quantization_config; empty when neither exists)."""
    directory, file = tensor_file(path)
    qc: dict = {}
    for fname in ("quantize_config.json", "config.json"):
        p = os.path.join(directory, fname)
        if os.path.exists(p):
            with open(p) as f:
                d = json.load(f)
            qc = d.get("quantization_config", d) if fname == "config.json" else d
            break
    return file, qc


def load_gptq_results(path: Union[str, os.PathLike]) -> Dict[str, Tuple[QuantResult, Optional[np.ndarray]]]:
    """{layer name: (QuantResult, bias)} for every quantized layer of a GPTQ checkpoint written here or by
    another GPTQ tool (reads checkpoint_format / group_size / sym from quantize_config.json)."""
    file, qc = _gptq_dir_config(path)
    tensors, _ = read_safetensors(file)
    fmt = qc.get("checkpoint_format", "gptq")
    names = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    gs, bits = qc.get("group_size"), qc.get("bits")
    return {
        n: unpack_gptq_layer(
            tensors,
            n,
            checkpoint_format=fmt,
            sym=qc.get("sym"),
            group_size=None if gs is None else int(gs),
            expected_bits=None if bits is None else int(bits),
        )
        for n in names
    }


def load_gptq(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """{layer name: dequantized float32 weight (N x K)} of a GPTQ checkpoint."""
    return {n: r.weight for n, (r, _) in load_gptq_results(path).items()}
