"""GGUF files that llama.cpp loads: a (quantized) Hugging Face llama model with its metadata and tokenizer.

``save_gguf(model, path, report)`` writes every tensor of a ``LlamaForCausalLM`` under llama.cpp's names:

* the layers ``quantize_model(..., gguf=...)`` solved: the solver's own blocks (``quantease.gguf.pack``),
  never re-quantized, so llama.cpp's dequantization reproduces ``report.results[name].weight`` bit for bit;
* the other matrices (token embedding, output, skipped layers): the type llama-quantize gives them in the
  run's mix (``quantease.gguf_mixes``), by ``quantease.gguf.rtn`` (llama.cpp's reference rounding);
* 1-D tensors (norms, biases) in F32, as llama.cpp's converter writes them.

Without a report the model is written unquantized (``float_type`` "F32" or "F16" for the matrices), the
input ``llama-quantize`` expects. ``attn_q``/``attn_k`` rows are permuted as llama.cpp's converter does for
the llama architecture (its RoPE pairs dimension i with i + d/2 inside a head, Hugging Face's with i + 1);
rows are independent for every block type, so the packed rows are permuted, not re-quantized.

Metadata and tokenizer: from ``template`` (a GGUF file the model came from, e.g. SmolLM2's) everything but
the file type is copied; else they are written from ``model.config`` and a byte-level BPE ``tokenizer``
(GPT-2 style, as Llama 3 and SmolLM use), with the keys llama.cpp's converter writes for a llama model.
The ``gguf`` package (llama.cpp's Python writer) is imported inside the function.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import gguf as qgguf
from .._rtn import rtn
from ..gguf_mixes import FILE_TYPES, FLOAT_TYPES, TypePlan, gguf_tensor_name, tensor_type

__all__ = ["GGUFStream", "save_gguf"]

# Template keys that describe the file being written, not the model: the writer sets them itself.
_OWN_KEYS = ("GGUF.", "general.architecture", "general.alignment", "general.file_type", "general.quantization_version")
# Template hyper-parameters that must agree with the model's config.
_CONFIG_KEYS = {
    "llama.block_count": "num_hidden_layers",
    "llama.embedding_length": "hidden_size",
    "llama.feed_forward_length": "intermediate_size",
    "llama.attention.head_count": "num_attention_heads",
    "llama.attention.head_count_kv": "num_key_value_heads",
}


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"save_gguf needs the gguf package (pip install 'quantease[export]'): {err}") from err
    return gguf


class _Model:
    """What the writer needs to know of a Hugging Face llama model."""

    def __init__(self, model: Any):
        config: Any = getattr(model, "config", None)
        if getattr(config, "model_type", None) != "llama":
            raise ValueError(
                f"save_gguf writes llama-architecture models (config.model_type 'llama'), got "
                f"{getattr(config, 'model_type', type(model).__name__)!r}"
            )
        self.config: Any = config
        self.n_layer = int(config.num_hidden_layers)
        self.n_head = int(config.num_attention_heads)
        self.n_head_kv = int(getattr(config, "num_key_value_heads", None) or self.n_head)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.n_head)
        embed, output = model.get_input_embeddings(), model.get_output_embeddings()
        self.tied = output is None or output.weight is embed.weight
        # named_parameters lists a tied output matrix once, under the embedding's name.
        self.params: Dict[str, Any] = dict(model.named_parameters())

    def rope(self) -> Dict[str, Any]:
        params = getattr(self.config, "rope_parameters", None)
        if params is None:  # transformers 4: rope_theta and rope_scaling
            params = {
                **(getattr(self.config, "rope_scaling", None) or {}),
                "rope_theta": getattr(self.config, "rope_theta", 10000.0),
            }
        return dict(params)


def _permutation(rows: int, n_head: int) -> np.ndarray:
    """Row order of llama.cpp's attn_q/attn_k: within each head, rows (i, i + d/2) become (2i, 2i + 1)."""
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {rows} rows into {n_head} heads of pairs")
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def _to_numpy(tensor: Any) -> np.ndarray:
    """A float32 view of a parameter (a copy only when it is not float32 on the CPU)."""
    import torch

    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def _quantized_rows(name: str, param: Any, result: Any, ggml_type: str) -> np.ndarray:
    """The packed rows of a layer the pipeline solved, after checking they are the model's weight."""
    import torch

    if result is None:
        raise ValueError(
            f"report has no result for layer {name!r}: quantize_model(..., gguf=...) keeps them "
            f"(do not pass keep_results=False)"
        )
    blocks = getattr(result, "gguf", None)
    if blocks is None or blocks.type != ggml_type:
        raise ValueError(
            f"report's result for layer {name!r} is not on {ggml_type} blocks (got {getattr(blocks, 'type', None)})"
        )
    expected = np.asarray(result.weight, dtype=np.float32)
    if param.dtype != torch.float32:  # the pipeline wrote the weight back in the layer's dtype
        expected = torch.from_numpy(np.ascontiguousarray(expected)).to(param.dtype).float().numpy()
    if expected.shape != tuple(param.shape) or not np.array_equal(expected, _to_numpy(param)):
        raise ValueError(
            f"the model's weight of {name!r} is not the quantized weight in the report; was the "
            f"model changed after quantize_model?"
        )
    return qgguf.pack(result)


def _tensor_plan(model: _Model, plan: Optional[TypePlan], float_type: str) -> Dict[str, str]:
    """The GGUF type of every parameter (by Hugging Face name)."""
    types = {}
    for name, param in model.params.items():
        module = name.rsplit(".", 1)[0]
        if param.dim() != 2:
            types[name] = "F32"
        elif plan is None:
            types[name] = float_type
        elif module in plan.types:
            types[name] = plan.types[module]
        else:
            gguf_name = gguf_tensor_name(module)
            mix = plan.mix or "Q8_0"
            types[name] = tensor_type(
                mix,
                f"{gguf_name}.weight",
                tuple(param.shape),
                n_layer=model.n_layer,
                n_head=model.n_head,
                n_head_kv=model.n_head_kv,
                imatrix=plan.imatrix,
                tied_embeddings=model.tied,
            )
    return types


def _file_type(plan: Optional[TypePlan], types: Dict[str, str], model: _Model, float_type: str) -> int:
    if plan is None:
        return FILE_TYPES[float_type]
    if plan.mix is not None:
        return FILE_TYPES[plan.mix]
    # A per-layer choice: the file type of the type that holds most weights.
    counts: Counter = Counter()
    for name, ggml_type in types.items():
        counts[ggml_type] += model.params[name].numel()
    return FILE_TYPES.get(counts.most_common(1)[0][0], 1024)


# GGUF metadata value types (gguf.GGUFValueType) -> struct format of a scalar; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read_metadata(path: str) -> Dict[str, Tuple[Any, int, Optional[int]]]:
    """The key-value section of a little-endian GGUF file: key -> (value, value type, array item type).

    A direct parse of the header (magic, version, tensor and key counts, then each key's type and value);
    the gguf package's reader builds an object per array item (a 49k-token vocabulary: tens of seconds).
    """
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"template {path!r} is not a GGUF file")
        version, _, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"template {path!r} is GGUF version {version}; versions 2 and 3 are read")
        offset = 24

        def string() -> str:
            nonlocal offset
            (size,) = struct.unpack_from("<Q", buf, offset)
            offset += 8 + size
            return buf[offset - size : offset].decode("utf-8")

        def value(vtype: int) -> Any:
            nonlocal offset
            if vtype == _STRING:
                return string()
            fmt = "<" + _SCALARS[vtype]
            (item,) = struct.unpack_from(fmt, buf, offset)
            offset += struct.calcsize(fmt)
            return item

        fields: Dict[str, Tuple[Any, int, Optional[int]]] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", buf, offset)
            offset += 4
            if vtype != _ARRAY:
                fields[key] = (value(vtype), vtype, None)
                continue
            item_type, count = struct.unpack_from("<IQ", buf, offset)
            offset += 12
            if item_type in _SCALARS and item_type != 7:
                dtype = np.dtype("<" + _SCALARS[item_type])
                items = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).tolist()
                offset += dtype.itemsize * count
            else:
                items = [value(item_type) for _ in range(count)]
            fields[key] = (items, vtype, item_type)
    return fields


def _copy_template(writer: Any, template: Union[str, os.PathLike], model: _Model) -> None:
    gguf = _gguf()
    path = os.fspath(template)
    fields = _read_metadata(path)
    arch = fields.get("general.architecture", (None,))[0]
    if arch != "llama":
        raise ValueError(f"template {path!r} is not a llama GGUF file (general.architecture {arch!r})")
    for key, attr in _CONFIG_KEYS.items():
        want = getattr(model.config, attr, None)
        if key in fields and want is not None and int(fields[key][0]) != int(want):
            raise ValueError(f"template {key} is {fields[key][0]}, but the model's config.{attr} is {want}")
    tokens: List[str] = fields.get("tokenizer.ggml.tokens", ([], _ARRAY, _STRING))[0]
    rows = model.params["model.embed_tokens.weight"].shape[0]
    if len(tokens) != rows:
        raise ValueError(f"template has {len(tokens)} tokens, the model's embedding {rows} rows")
    for key, (val, vtype, item_type) in fields.items():
        if not key.startswith(_OWN_KEYS):
            writer.add_key_value(
                key, val, gguf.GGUFValueType(vtype), None if item_type is None else gguf.GGUFValueType(item_type)
            )


def _write_config(writer: Any, model: _Model) -> List[Tuple[str, np.ndarray]]:
    """llama.* hyper-parameters as llama.cpp's converter writes them; returns extra tensors (rope_freqs)."""
    gguf = _gguf()
    config = model.config
    writer.add_type("model")
    name = getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "")
    writer.add_name(os.path.basename(str(name).rstrip("/")) or "llama")
    writer.add_block_count(model.n_layer)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(model.n_head)
    writer.add_head_count_kv(model.n_head_kv)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_rope_dimension_count(model.head_dim)
    if model.head_dim != config.hidden_size // model.n_head:
        writer.add_key_length(model.head_dim)
        writer.add_value_length(model.head_dim)
    rope = model.rope()
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    rope_type = str(rope.get("rope_type", rope.get("type", "default")) or "default").lower()
    extra = []
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "llama3":
        extra.append(("rope_freqs.weight", _llama3_rope_factors(rope, model.head_dim)))
    elif rope_type != "default":
        raise ValueError(f"save_gguf does not write rope_type {rope_type!r}; pass template= (a GGUF of the model)")
    return extra


def _llama3_rope_factors(rope: Dict[str, Any], dim: int) -> np.ndarray:
    """Llama 3.1's frequency-dependent RoPE scaling, stored by llama.cpp as a per-frequency divisor."""
    freqs = 1.0 / (float(rope.get("rope_theta", 10000.0)) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1.0 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)


def _pre_tokenizer(spec: Dict[str, Any]) -> Optional[str]:
    """llama.cpp's name for a byte-level BPE pre-tokenizer of tokenizer.json, or None when unknown."""

    def byte_level(p: Dict[str, Any], regex: bool) -> bool:
        return p.get("type") == "ByteLevel" and bool(p.get("use_regex", True)) == regex

    if byte_level(spec, True):
        return "gpt-2"
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else []
    if (
        len(parts) == 2
        and parts[0].get("type") == "Digits"
        and parts[0].get("individual_digits")
        and byte_level(parts[1], True)
    ):
        return "smollm"
    if len(parts) == 2 and parts[0].get("type") == "Split" and byte_level(parts[1], False):
        pattern = parts[0].get("pattern", {}).get("Regex", "")
        if pattern.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"):
            return "llama-bpe"
    return None


def _write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre: Optional[str]) -> None:
    """A byte-level BPE tokenizer's vocabulary, merges and special tokens (tokenizer.ggml.*)."""
    gguf = _gguf()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            "tokenizer must be a Hugging Face fast tokenizer (with backend_tokenizer); "
            "or pass template= (a GGUF of the model)"
        )
    spec = json.loads(backend.to_str())
    bpe = spec.get("model", {})
    if bpe.get("type") != "BPE" or bpe.get("byte_fallback"):
        raise ValueError(
            "save_gguf writes byte-level BPE tokenizers (GPT-2 style: Llama 3, SmolLM); this one is "
            f"{bpe.get('type')}{' with byte fallback' if bpe.get('byte_fallback') else ''}: pass "
            f"template= (a GGUF of the model)"
        )
    pre = pre or _pre_tokenizer(spec.get("pre_tokenizer") or {})
    if pre is None:
        raise ValueError(
            "unknown pre-tokenizer in the tokenizer; pass tokenizer_pre= (llama.cpp's name, e.g. "
            "'llama-bpe', 'gpt-2') or template="
        )
    vocab = backend.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"tokenizer has token id {max(vocab.values())}, beyond the model's {vocab_size} rows")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: token for token, i in vocab.items()}
    tokens: List[str] = []
    kinds: List[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            kinds.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, {"unk": "add_unk_token_id", "pad": "add_pad_token_id"}.get(kind, f"add_{kind}_token_id"))(
                int(token_id)
            )
    # Whether the tokenizer adds BOS/EOS itself: seen on a probe, whatever configuration says it.
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


class GGUFStream:
    """A GGUF file written tensor by tensor, in the order of ``model.named_parameters()``.

    The header (metadata and every tensor's name, type and shape) is written on construction: it needs only
    the parameters' shapes, so ``model`` may be a meta-device skeleton (quantease.offload). Then ``write`` takes
    each parameter's values in that order (``pending`` lists the names still due) and ``finish`` renames the
    finished file into place; ``abort`` removes an unfinished one. save_gguf feeds it a model in memory;
    quantease.offload feeds it one block at a time, so the file never needs the whole model in memory.
    Arguments as save_gguf's; ``plan`` is the run's TypePlan (None: unquantized, ``float_type``).
    """

    def __init__(
        self,
        model: Any,
        path: Union[str, os.PathLike],
        plan: Optional[TypePlan],
        *,
        tokenizer: Any = None,
        template: Union[None, str, os.PathLike] = None,
        float_type: str = "F32",
        tokenizer_pre: Optional[str] = None,
    ):
        gguf = _gguf()
        if float_type not in FLOAT_TYPES:
            raise ValueError(f"float_type must be 'F32' or 'F16', got {float_type!r}")
        if template is None and tokenizer is None:
            raise ValueError("pass tokenizer= (the model's Hugging Face tokenizer) or template= (a GGUF of the model)")
        self.info = _Model(model)
        self.plan = plan
        self.types = _tensor_plan(self.info, plan, float_type)
        self.path = os.fspath(path)
        self.tmp = f"{self.path}.tmp"
        self.written: Dict[str, str] = {}
        self.writer = gguf.GGUFWriter(self.tmp, "llama")
        try:
            self.extra: List[Tuple[str, np.ndarray]] = []
            if template is not None:
                _copy_template(self.writer, template, self.info)
            else:
                self.extra = _write_config(self.writer, self.info)
                _write_tokenizer(self.writer, tokenizer, int(self.info.config.vocab_size), tokenizer_pre)
            self.writer.add_file_type(_file_type(plan, self.types, self.info, float_type))
            if plan is not None:
                self.writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            for name, param in self.info.params.items():
                self._declare(self._gguf_name(name), tuple(param.shape), self.types[name])
            for name, data in self.extra:
                self._declare(name, data.shape, "F32")
            self.writer.write_header_to_file()
            self.writer.write_kv_data_to_file()
            self.writer.write_ti_data_to_file()
        except BaseException:
            self.abort()
            raise
        self.pending: List[str] = list(self.info.params)

    @staticmethod
    def _gguf_name(name: str) -> str:
        module, kind = name.rsplit(".", 1)
        gguf_name = gguf_tensor_name(module)
        if gguf_name is None:
            raise ValueError(f"parameter {name!r} has no llama.cpp tensor name")
        return f"{gguf_name}.{kind}"

    def _declare(self, gguf_name: str, shape: Tuple[int, ...], ggml_type: str) -> None:
        """One tensor's entry in the header: what ``GGUFWriter.add_tensor`` records for the data written later."""
        gguf = _gguf()
        if ggml_type in FLOAT_TYPES:
            dtype = np.dtype(np.float16 if ggml_type == "F16" else np.float32)
            self.writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        else:
            raw = gguf.GGMLQuantizationType[ggml_type]
            byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, raw)
            self.writer.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw)

    def write(self, name: str, param: Any, result: Any = None) -> None:
        """The data of parameter ``name`` (``pending[0]``): ``param`` its values (a tensor), ``result`` the
        layer's QuantResult when the pipeline solved it on a GGUF type."""
        if not self.pending or self.pending[0] != name:
            due = self.pending[0] if self.pending else "nothing"
            raise ValueError(f"GGUF tensors are written in the model's order: {due!r} is due, got {name!r}")
        module = name.rsplit(".", 1)[0]
        gguf_name = self._gguf_name(name)
        ggml_type = self.types[name]
        if ggml_type in FLOAT_TYPES:
            data = _to_numpy(param)
            data = data.astype(np.float16) if ggml_type == "F16" else data
        elif self.plan is not None and module in self.plan.types:
            data = _quantized_rows(module, param, result, ggml_type)
        else:
            # Not solved by the pipeline: llama-quantize's rounding (its reference quantizer).
            data = qgguf.pack(rtn(_to_numpy(param), gguf=ggml_type))
        if gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = self.info.n_head if ".attn_q." in gguf_name else self.info.n_head_kv
            data = data[_permutation(data.shape[0], heads)]
        self.writer.write_tensor_data(np.ascontiguousarray(data))
        self.written[gguf_name] = ggml_type
        self.pending.pop(0)

    def finish(self) -> Dict[str, str]:
        """Write the extra tensors (rope_freqs), close and rename the file; the GGUF type of every tensor."""
        if self.pending:
            raise ValueError(
                f"{len(self.pending)} tensor(s) of the GGUF file were never written, from {self.pending[0]!r}"
            )
        for name, data in self.extra:
            self.writer.write_tensor_data(data)
            self.written[name] = "F32"
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.written

    def abort(self) -> None:
        """Close and remove an unfinished file (nothing when it was finished)."""
        self.writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def save_gguf(
    model: Any,
    path: Union[str, os.PathLike],
    report: Any = None,
    *,
    tokenizer: Any = None,
    template: Union[None, str, os.PathLike] = None,
    float_type: str = "F32",
    tokenizer_pre: Optional[str] = None,
) -> Dict[str, str]:
    """Write ``model`` (a Hugging Face ``LlamaForCausalLM``) as a GGUF file llama.cpp loads.

    report: the QuantReport of ``quantize_model(model, ..., gguf=...)`` (its results hold the blocks); None
        writes the model unquantized (``float_type`` "F32" or "F16" for the matrices, norms in F32).
    tokenizer: the model's Hugging Face tokenizer (byte-level BPE), written as ``tokenizer.ggml.*``; not
        needed with ``template``.
    template: a GGUF file of the same model (e.g. the one it was loaded from): its metadata and tokenizer are
        copied, its tensors replaced.
    tokenizer_pre: llama.cpp's pre-tokenizer name, when it cannot be told from the tokenizer.

    The file is written to ``path + ".tmp"`` tensor by tensor (GGUFStream) and renamed. A model too large for
    memory is written the same way, block by block, by ``quantize_model(..., offload=Offload(src, path,
    format="gguf", tokenizer=...))``. Returns the GGUF type of every tensor written, by GGUF tensor name.
    """
    plan = getattr(report, "gguf", None) if report is not None else None
    if report is not None and not isinstance(plan, TypePlan):
        raise ValueError(
            "report must come from quantize_model(..., gguf=...) (its layers on GGUF block types); "
            "got a report without GGUF types"
        )
    results = getattr(report, "results", {}) if report is not None else {}
    stream = GGUFStream(
        model, path, plan, tokenizer=tokenizer, template=template, float_type=float_type, tokenizer_pre=tokenizer_pre
    )
    try:
        for name, param in stream.info.params.items():
            stream.write(name, param, results.get(name.rsplit(".", 1)[0]))
        return stream.finish()
    except BaseException:
        stream.abort()
        raise
