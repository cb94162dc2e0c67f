"""A model larger than RAM: its weights stay in safetensors files on disk, one block in memory at a time.

``empty_model(path)`` builds a Hugging Face model from the checkpoint's ``config.json`` with every parameter on
the meta device (shapes and dtypes, no storage; buffers such as rotary frequencies are real, as the model's
own code computes them). ``quantize_model(model, ..., offload=Offload(path, out))`` then:

1. materialises the parameters outside the blocks (embedding, final norm, head) for the capture of the first
   block's inputs, and frees them again;
2. for each block: reads its parameters from the files, quantizes it, computes the next block's inputs, writes
   the quantized block to ``out`` (one safetensors shard per block) and puts its parameters back on the meta
   device;
3. copies the tensors outside the blocks from the source files to a last shard and writes
   ``model.safetensors.index.json`` (and, for GPTQ, ``quantize_config.json``; ``config.json`` in both cases).

Peak memory is therefore one block's weights (plus the solver's float32 copy of one layer and one group's
Hessians) and the calibration activations, whatever the number of blocks. ``format``: "dense" (the solvers'
dequantized weights in the checkpoint's dtype: a plain Hugging Face checkpoint, what ``from_pretrained`` loads)
"gptq" (every quantized layer as GPTQ tensors, quantease.export.gptq's layout) or "quantease" (quantease's
own format, every grid kind; ``quantease.export.load_quantease*`` read the directory), in sharded files; or
"gguf": ``out`` is one GGUF file (quantease.export.gguf's, for a llama model; give ``tokenizer`` or
``template`` as to save_gguf), its header written before the first block (it needs only the skeleton's
shapes), then each tensor in the model's order: the embedding read from the source, each block's tensors as
the block is stored (the layers solved with ``quantize_model(..., gguf=...)`` as their solver's blocks), the
final norm and output read from the source at the end. The file is byte for byte the one ``save_gguf`` writes
for the same model quantized in memory.
Files are read with safetensors' ``safe_open`` only for the tensors a step needs, and closed after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ["SafetensorsWeights", "empty_model", "materialize", "release", "Offload", "OFFLOAD_FORMATS"]

OFFLOAD_FORMATS = ("dense", "gptq", "quantease", "gguf")
INDEX_FILENAME = "model.safetensors.index.json"


class SafetensorsWeights:
    """The tensors of a safetensors checkpoint (a directory with ``model.safetensors`` or a sharded one with
    ``model.safetensors.index.json``), read on demand."""

    def __init__(self, path: Union[str, os.PathLike]):
        from safetensors import safe_open

        self.directory = os.fspath(path)
        index = os.path.join(self.directory, INDEX_FILENAME)
        single = os.path.join(self.directory, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.file_of = {k: os.path.join(self.directory, v) for k, v in weight_map.items()}
        elif os.path.exists(single):
            with safe_open(single, framework="pt") as f:
                self.file_of = {k: single for k in f.keys()}
        else:
            raise ValueError(f"path {self.directory!r} holds neither model.safetensors nor {INDEX_FILENAME}")

    def names(self) -> List[str]:
        return list(self.file_of)

    def load(self, names: Iterable[str]) -> Dict[str, torch.Tensor]:
        """The named tensors, copies in memory. The file is mapped for one tensor at a time: its pages, which
        count in the resident set while mapped, never add up to more than that tensor."""
        from safetensors import safe_open

        out: Dict[str, torch.Tensor] = {}
        for name in names:
            if name not in self.file_of:
                raise ValueError(f"tensor {name!r} is not in the checkpoint at {self.directory!r}")
            with safe_open(self.file_of[name], framework="pt") as f:
                out[name] = f.get_tensor(name)
        return out


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Inside: every parameter a module registers is moved to the meta device (buffers stay real)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def empty_model(path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The causal LM of the checkpoint at ``path`` (its config.json) with every parameter on the meta device.
    dtype: the parameters' dtype (default: the config's ``dtype``, else float32)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(os.fspath(path))
    if dtype is None:
        dtype = getattr(config, "dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    with _parameters_on_meta():
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _set_parameter(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    old = owner._parameters[leaf]
    owner._parameters[leaf] = nn.Parameter(value, requires_grad=False if old is None else old.requires_grad)


def materialize(
    module: nn.Module, prefix: str, weights: SafetensorsWeights, names: Optional[Iterable[str]] = None
) -> None:
    """Read the module's meta parameters (named ``prefix + name`` in the files; only ``names`` when given) into
    memory, in their dtype."""
    params = dict(module.named_parameters())
    wanted = {n: params[n] for n in (params if names is None else names) if params[n].device.type == "meta"}
    loaded = weights.load(prefix + name for name in wanted)
    for name, p in wanted.items():
        t = loaded.pop(prefix + name)
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{prefix + name}: {tuple(t.shape)} in the checkpoint, {tuple(p.shape)} in the model")
        _set_parameter(module, name, t.to(p.dtype))


def release(module: nn.Module) -> None:
    """Put the module's parameters back on the meta device (their memory is freed)."""
    for name, p in list(module.named_parameters()):
        if p.device.type != "meta":
            _set_parameter(module, name, torch.empty(p.shape, dtype=p.dtype, device="meta"))


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _save_shard(path: str, tensors: Mapping[str, Any], metadata: Dict[str, str]) -> None:
    """One safetensors file, each tensor's bytes written straight from its memory (safetensors' own writers
    build the whole file in memory first: a second copy of a block), to a temporary name, then renamed.

    The layout is safetensors': an 8-byte little-endian header size, the JSON header (dtype, shape and byte
    offsets of every tensor, padded with spaces to a multiple of 8), the tensors' bytes in header order."""
    flat = {}
    for key, t in tensors.items():
        t = t if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))
        flat[key] = t.detach().cpu().contiguous()
    header: Dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for key in sorted(flat):
        t = flat[key]
        size = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for key in sorted(flat):
            t = flat[key]
            if t.numel():
                f.write(t.view(torch.uint8).reshape(-1).numpy().data)
    os.replace(tmp, path)


class Offload:
    """Where quantize_model reads a model's weights from (``source``, a safetensors checkpoint directory) and
    streams the quantized blocks to (``out``: a directory, a ``.gguf`` file for format "gguf"; None: nothing is
    written). ``tokenizer``, ``template``, ``float_type``, ``tokenizer_pre``: the GGUF file's, as save_gguf's.
    See the module docstring.
    """

    def __init__(
        self,
        source: Union[str, os.PathLike],
        out: Optional[Union[str, os.PathLike]],
        format: str = "dense",
        *,
        tokenizer: Any = None,
        template: Union[None, str, os.PathLike] = None,
        float_type: str = "F32",
        tokenizer_pre: Optional[str] = None,
    ):
        if format not in OFFLOAD_FORMATS:
            raise ValueError(f"format must be one of {', '.join(OFFLOAD_FORMATS)}, got {format!r}")
        if format == "gguf" and out is not None and tokenizer is None and template is None:
            raise ValueError("format 'gguf' needs tokenizer= (the model's Hugging Face tokenizer) or template=")
        self.weights = SafetensorsWeights(source)
        self.out = None if out is None else os.fspath(out)
        self.format = format
        self.needs_results = format != "dense" and out is not None
        self._gguf_options = dict(
            tokenizer=tokenizer, template=template, float_type=float_type, tokenizer_pre=tokenizer_pre
        )
        self._gguf: Any = None  # the GGUFStream being written
        self._block_prefixes: List[str] = []
        self._shards: List[Tuple[str, List[str]]] = []  # (file name, tensor names) in writing order
        self._results: List[Tuple[int, int, bool, str, bool]] = []  # per GPTQ layer, for quantize_config.json
        if self.out is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.out)) if format == "gguf" else self.out, exist_ok=True)

    # ----------------------------------------------------------------------------------- the pipeline's steps

    def begin(
        self, model: nn.Module, blocks: Sequence[Tuple[str, nn.Module]], plan: Any = None, write: bool = True
    ) -> None:
        """Materialise what lies outside the blocks (for the capture of the first block's inputs). A GGUF file
        (unless ``write`` is False: another rank writes) gets its header, from the run's TypePlan ``plan``
        (None: unquantized), and the tensors due before the first block."""
        self._block_prefixes = [f"{name}." for name, _ in blocks]
        if self.format == "gguf" and self.out is not None and write:
            from .export.gguf import GGUFStream

            self._gguf = GGUFStream(model, self.out, plan, **self._gguf_options)
            self._write_gguf()
        materialize(model, "", self.weights, names=self._outside(model))

    def captured(self, model: nn.Module) -> None:
        """The first block's inputs are captured: what lies outside the blocks goes back to the meta device."""
        params = dict(model.named_parameters())
        for name in self._outside(model):
            p = params[name]
            _set_parameter(model, name, torch.empty(p.shape, dtype=p.dtype, device="meta"))

    def load_block(self, block_name: str, block: nn.Module) -> None:
        materialize(block, f"{block_name}.", self.weights)

    def store_block(
        self, index: int, block_name: str, block: nn.Module, results: Optional[Mapping[str, Any]], write: bool = True
    ) -> None:
        """Write the quantized block as shard ``index`` (unless ``write`` is False: another rank writes) and free
        its parameters."""
        if self._gguf is not None and write:
            self._write_gguf(block_name, block, results or {})
        elif self.out is not None and write:
            tensors = {f"{block_name}.{n}": p.detach() for n, p in block.named_parameters()}
            metadata: Dict[str, str] = {}
            if self.format == "gptq":
                tensors = self._gptq(tensors, results or {})
            elif self.format == "quantease":
                tensors, metadata = self._quantease(tensors, results or {})
            self._write(f"block-{index:05d}.safetensors", tensors, metadata)
        release(block)

    def finish(self, config: Optional[Dict[str, Any]] = None) -> None:
        """The tensors outside the blocks (copied from the source), the index and the configs."""
        if self._gguf is not None:
            self._write_gguf()
            self._gguf.finish()
            self._gguf = None
            return
        if self.out is None:
            return
        rest = [n for n in self.weights.names() if not n.startswith(tuple(self._block_prefixes))]
        self._write(
            "rest.safetensors",
            self.weights.load(rest),
            self._quantease({}, {})[1] if self.format == "quantease" else {},
        )
        weight_map = {name: file for file, names in self._shards for name in names}
        index = {"metadata": {"producer": "quantease"}, "weight_map": dict(sorted(weight_map.items()))}
        _write_json(os.path.join(self.out, INDEX_FILENAME), index)
        src_config = os.path.join(self.weights.directory, "config.json")
        merged = dict(config or {})
        if not merged and os.path.exists(src_config):
            with open(src_config) as f:
                merged = json.load(f)
        if self.format == "gptq":
            qc = self._quantization_config()
            merged["quantization_config"] = qc
            _write_json(os.path.join(self.out, "quantize_config.json"), qc)
        if merged:
            _write_json(os.path.join(self.out, "config.json"), merged)
        elif os.path.exists(src_config):
            shutil.copyfile(src_config, os.path.join(self.out, "config.json"))

    def close(self) -> None:
        """Remove the unfinished GGUF file of a run that failed (nothing after ``finish``)."""
        if self._gguf is not None:
            self._gguf.abort()
            self._gguf = None

    # -------------------------------------------------------------------------------------------- helpers

    def _write_gguf(self, block_name: Optional[str] = None, block: Optional[nn.Module] = None, results: Any = None):
        """The GGUF tensors due next, in the model's order: those outside the blocks read from the source one at
        a time, then (given a block) the block's own, up to the next block's first tensor."""
        stream = self._gguf
        prefix = None if block_name is None else f"{block_name}."
        params = {} if block is None else dict(block.named_parameters())
        while stream.pending:
            name = stream.pending[0]
            if not name.startswith(tuple(self._block_prefixes)):
                stream.write(name, self.weights.load([name])[name])
            elif prefix is not None and name.startswith(prefix):
                stream.write(name, params[name[len(prefix) :]], (results or {}).get(name.rsplit(".", 1)[0]))
            else:
                break

    def _outside(self, model: nn.Module) -> List[str]:
        """The model's parameters outside the blocks."""
        return [n for n, _ in model.named_parameters() if not n.startswith(tuple(self._block_prefixes))]

    def _write(self, file: str, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
        assert self.out is not None
        _save_shard(os.path.join(self.out, file), tensors, {"format": "pt", "producer": "quantease", **metadata})
        self._shards.append((file, list(tensors)))

    def _gptq(self, tensors: Dict[str, Any], results: Mapping[str, Any]) -> Dict[str, Any]:
        from .export.gptq import acts_in_order, gptq_tensors

        out = {k: v for k, v in tensors.items() if k[: -len(".weight")] not in results or not k.endswith(".weight")}
        for name, result in results.items():
            bias = out.pop(f"{name}.bias", None)
            bias_np = None if bias is None else bias.to(torch.float32).numpy()
            fmt = "gptq" if result.sym else "gptq_v2"
            out.update(gptq_tensors(result, name, bias=bias_np, checkpoint_format=fmt))
            act, trivial = acts_in_order(result)
            self._results.append((result.bits, result.group_size, bool(result.sym), result.method, act or not trivial))
        return out

    def _quantease(self, tensors: Dict[str, Any], results: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """The block's tensors with its quantized layers in the quantease format, and the shard's metadata."""
        from .export.quantease_format import QUANTEASE_FORMAT_VERSION, quantease_tensors

        out = {k: v for k, v in tensors.items() if not (k.endswith(".weight") and k[: -len(".weight")] in results)}
        layers = {}
        for name, result in results.items():
            bias = out.pop(f"{name}.bias", None)
            t, layers[name] = quantease_tensors(result, name, bias=None if bias is None else bias.float().numpy())
            out.update(t)
        meta = {"quantease_format": QUANTEASE_FORMAT_VERSION, "quantease_layers": json.dumps(layers, sort_keys=True)}
        return out, meta

    def _quantization_config(self) -> Dict[str, Any]:
        bits = sorted({r[0] for r in self._results})
        groups = sorted({r[1] for r in self._results})
        if len(bits) > 1 or len(groups) > 1:
            raise ValueError(f"every layer of a GPTQ checkpoint must share bits and group_size, got {bits} {groups}")
        sym = all(r[2] for r in self._results)
        return {
            "quant_method": "gptq",
            "bits": bits[0] if bits else 4,
            "group_size": (groups[0] if groups and groups[0] > 0 else -1),
            "desc_act": any(r[4] for r in self._results),  # loaders then honour a non-monotonic g_idx
            "sym": sym,
            "true_sequential": True,
            "checkpoint_format": "gptq" if sym else "gptq_v2",
            "meta": {"quantizer": ["quantease"], "methods": sorted({r[3] for r in self._results})},
        }


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
