"""llama.cpp's type mixes for a llama-architecture model: which GGUF block type each tensor gets.

``llama-quantize model.gguf out.gguf Q4_K_M`` does not give every tensor Q4_K: its file type (a "mix") sends
some tensors to more bits (``attn_v`` and ``ffn_down`` of selected layers, the output matrix), and a tensor
whose rows the type's block does not divide falls back to a 32-block type (``quantease.gguf.TYPES``'
fallback). This module states those rules for the mixes quantease can write, as ``src/llama-quant.cpp``
(llama_tensor_get_type) applies them to the llama architecture (dense, not Falcon, no experts), so that a file
written by ``quantease.export.save_gguf`` has the same tensor types, hence the same size, as llama-quantize's
file of the same name.

Names: GGUF tensor names (``blk.3.ffn_down.weight``) are what the rules read; :func:`gguf_tensor_name` maps a
Hugging Face llama layer name (``model.layers.3.mlp.down_proj``) to it. ``imatrix`` says whether the file is
made with calibration data (llama-quantize's ``--imatrix``; for quantease: a solver that uses H): a few rules
depend on it. Types are the upper-case GGUF names ("Q4_K"); "F16"/"F32" mean the tensor stays unquantized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .gguf import TYPES

__all__ = [
    "MIXES",
    "FLOAT_TYPES",
    "FILE_TYPES",
    "TypePlan",
    "fallback_type",
    "tensor_type",
    "gguf_tensor_name",
    "layer_types",
]

#: Types that leave a tensor unquantized (llama.cpp's last resort for rows no block divides is F16).
FLOAT_TYPES = ("F32", "F16")

#: Mix name -> its base type (llama-quantize's default type for that file type).
MIXES: Dict[str, str] = {
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
    "IQ4_NL": "IQ4_NL",
    "Q2_K": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
}

#: ``general.file_type`` (llama_ftype) written for each mix; a pure type is written as the mix of its name.
FILE_TYPES: Dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ4_NL": 25,
    "Q3_K": 11,
    "Q4_K": 14,
    "Q5_K": 16,
}

# Hugging Face llama module names -> GGUF tensor names (blocks: model.layers.N.<module>).
_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def gguf_tensor_name(hf_name: str) -> Optional[str]:
    """The GGUF name of a Hugging Face llama module (without ``.weight``), or None for an unknown module."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _BLOCK_RE.match(hf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"blk.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    return None


def _block(ggml_type: str) -> int:
    return 1 if ggml_type in FLOAT_TYPES else TYPES[ggml_type].block_size


def fallback_type(ggml_type: str, cols: int) -> str:
    """The type llama.cpp writes for a tensor of ``cols`` columns asked to be ``ggml_type``.

    A 256-block type whose block does not divide the row falls back to its 32-block partner; a row that 32
    does not divide either stays in F16 (llama.cpp's last resort)."""
    if cols % _block(ggml_type) == 0:
        return ggml_type
    fallback = TYPES[ggml_type].fallback
    return fallback if cols % _block(fallback) == 0 else "F16"


def _use_more_bits(layer: int, n_layer: int) -> bool:
    # llama.cpp's choice of the layers that get more bits: the first and last eighth, every third between.
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def _mix_rule(mix: str, role: str, layer: int, n_layer: int, n_gqa: int, imatrix: bool) -> Optional[str]:
    """The type llama_tensor_get_type_impl picks for a block tensor, or None to keep the mix's base type."""
    if role == "attn_v":
        if mix == "Q2_K":
            picked = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif mix == "Q3_K_M":
            picked = "Q5_K" if layer < 2 else "Q4_K"
        elif mix == "Q3_K_L":
            picked = "Q5_K"
        elif mix == "IQ4_NL" and n_gqa >= 4:
            picked = "Q5_K"
        elif mix in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, n_layer):
            picked = "Q6_K"
        elif mix == "Q4_K_S" and layer < 4:
            picked = "Q5_K"
        else:
            picked = None
        # llama.cpp's 70B llama (80 layers): attn_v is 8x smaller than attn_q, so it gets Q5_K.
        if n_layer == 80 and (picked or MIXES[mix]) in ("Q3_K", "Q4_K"):
            picked = "Q5_K"
        return picked
    if role == "ffn_down":
        if mix == "Q2_K":
            return "Q3_K"
        if mix == "Q3_K_M":
            return "Q5_K" if layer < n_layer // 16 else "Q4_K"
        if mix == "Q3_K_L":
            return "Q5_K"
        if mix in ("Q4_K_M", "Q5_K_M"):
            return "Q6_K" if _use_more_bits(layer, n_layer) else None
        if mix == "IQ4_NL" and layer < n_layer // 8 and not imatrix:
            return "Q5_K"
        if mix == "Q4_K_S" and layer < n_layer // 8:
            return "Q5_K"
        if mix in ("Q4_0", "Q5_0") and imatrix and layer < n_layer // 8:
            return {"Q4_0": "Q4_1", "Q5_0": "Q5_1"}[mix]
        return None
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mix)
    return None


def tensor_type(
    mix: str,
    name: str,
    shape: Tuple[int, int],
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    imatrix: bool = True,
    tied_embeddings: bool = False,
) -> str:
    """The type llama-quantize gives the 2-D GGUF tensor ``name`` (rows x cols) in file type ``mix``.

    ``mix`` is a name of :data:`MIXES` (llama.cpp's rules) or any type of ``quantease.gguf.TYPES`` (every tensor
    that type, as ``llama-quantize --pure``); ``tied_embeddings``: the model has no ``output`` tensor, so
    ``token_embd`` is quantized as the output matrix. The fallback for rows the block does not divide
    applies last, as in llama.cpp."""
    pure = mix not in MIXES
    if pure and mix not in TYPES and mix not in FLOAT_TYPES:
        raise ValueError(
            f"gguf type mix must be one of {', '.join(MIXES)} or a type of {', '.join(TYPES)}, got {mix!r}"
        )
    base = mix if pure else MIXES[mix]
    if base in FLOAT_TYPES:
        return base
    cols = shape[1]
    role = name[: -len(".weight")] if name.endswith(".weight") else name
    match = _LAYER_RE.match(role)
    role = role[match.end() :] if match else role
    picked = base
    if pure:
        pass
    elif role == "output" or (role == "token_embd" and tied_embeddings):
        # The output matrix (also the embedding when tied): Q6_K, or Q8_0 when the base block does not fit.
        picked = "Q8_0" if cols % _block(base) or base == "Q8_0" else "Q6_K"
    elif match:
        n_gqa = n_head // n_head_kv if n_head_kv else 1
        picked = _mix_rule(mix, role, int(match.group(1)), n_layer, n_gqa, imatrix) or base
    return fallback_type(picked, cols)


TypeChoice = Union[str, Mapping[str, str], Callable[[str], str]]


@dataclass(frozen=True)
class TypePlan:
    """The GGUF types of a quantize_model run: ``types`` by layer name, the ``mix`` they came from (None for a
    mapping or callable) and whether the solver saw calibration data (``imatrix``); save_gguf reads it to
    give the tensors the pipeline did not quantize (embedding, output) the type llama-quantize would."""

    mix: Optional[str]
    types: Dict[str, str]
    imatrix: bool


def layer_types(
    choice: TypeChoice,
    shapes: Mapping[str, Tuple[int, int]],
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    imatrix: bool = True,
) -> TypePlan:
    """The GGUF type of every layer named in ``shapes`` (Hugging Face names -> (rows, cols)).

    ``choice``: a mix or type name (case-insensitive; :func:`tensor_type` per layer, which needs llama
    layer names), a mapping from every layer name to a type, or a callable ``f(name) -> type``.
    """
    if isinstance(choice, str):
        mix = choice.upper()
        if mix not in MIXES and mix not in TYPES:
            raise ValueError(
                f"gguf must be a type mix ({', '.join(MIXES)}), a type "
                f"({', '.join(t for t in TYPES if t not in MIXES)}), a mapping or a "
                f"callable, got {choice!r}"
            )
        types = {}
        for name, shape in shapes.items():
            gguf_name = gguf_tensor_name(name)
            if gguf_name is None:
                raise ValueError(
                    f"gguf={choice!r} needs llama layer names (model.layers.N.self_attn.q_proj, "
                    f"...), got layer {name!r}; pass a mapping or callable from layer name to type"
                )
            types[name] = tensor_type(
                mix, gguf_name + ".weight", shape, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, imatrix=imatrix
            )
        return TypePlan(mix, types, imatrix)
    if isinstance(choice, Mapping):
        missing = [name for name in shapes if name not in choice]
        if missing:
            raise ValueError(
                f"gguf mapping has no type for layer(s) {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
            )
        pick: Callable[[str], Any] = choice.__getitem__
    elif callable(choice):
        pick = choice
    else:
        raise ValueError(f"gguf must be a type or mix name, a mapping or a callable, got {type(choice).__name__}")
    types = {}
    for name in shapes:
        chosen = pick(name)
        if not isinstance(chosen, str) or (chosen.upper() not in TYPES and chosen.upper() not in FLOAT_TYPES):
            raise ValueError(
                f"gguf type for layer {name!r} must be one of {', '.join((*TYPES, *FLOAT_TYPES))}, got {chosen!r}"
            )
        types[name] = chosen.upper()
    return TypePlan(None, types, imatrix)
