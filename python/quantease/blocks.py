"""The repeated blocks of a PyTorch model, their linear layers, and running one block at a time.

The sequential pipeline (quantease.pipeline) never runs the whole model after the start: it captures the
inputs that the first block receives (the hidden states plus every other argument the model passes it, e.g.
attention_mask, position_ids, position_embeddings) once, then pushes those hidden states through one block
after the other. This file holds the pieces that know about model structure:

- ``find_blocks`` / ``resolve_blocks``: the block list (the ``nn.ModuleList`` of same-class modules holding the
  most parameters: model.layers, transformer.h, encoder.layer, ...), or the one the user names;
- ``linear_layers``, ``layer_weight``, ``set_layer_weight``: the quantizable layers (``nn.Linear`` and HF
  transformers' ``Conv1D``, which stores its weight as in x out) and their weight as a rows x cols matrix;
- ``capture_block_inputs`` / ``BlockInputs.run``: the calibration inputs of block 0, and one block's forward.

Assumption (true for GPT-2, OPT, Llama/Mistral/Qwen2, BERT): block i+1 receives block i's first output as its
hidden states and the same other arguments as block 0.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from torch import nn

__all__ = [
    "find_blocks",
    "resolve_blocks",
    "linear_layers",
    "is_conv1d",
    "layer_weight",
    "layer_weight_shape",
    "set_layer_weight",
    "capture_block_inputs",
    "BlockInputs",
]

# Keyword arguments that carry a KV cache into a block: a cache would grow every time a block is re-run.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


def weight_tensor(module: nn.Module) -> torch.Tensor:
    """The layer's weight parameter (nn.Module's attribute typing says Tensor | Module)."""
    return cast(torch.Tensor, module.weight)


def is_conv1d(module: nn.Module) -> bool:
    """True for HF transformers' Conv1D (GPT-2 style): a linear layer whose weight is in_features x out_features."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
        and weight_tensor(module).ndim == 2
    )


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """A layer is skipped when a pattern equals its full dotted name or one of its components, or when a
    glob pattern (fnmatch) matches the full name."""
    parts = name.split(".")
    return any(p == name or p in parts or fnmatch.fnmatchcase(name, p) for p in patterns)


def linear_layers(module: nn.Module, prefix: str = "", skip: Sequence[str] = ()) -> Dict[str, nn.Module]:
    """The quantizable layers under ``module`` by full dotted name (``prefix`` + relative name), in
    registration order, leaving out the names that ``skip`` matches."""
    out: Dict[str, nn.Module] = {}
    for rel, m in module.named_modules():
        if not rel or not _is_linear(m):
            continue
        name = f"{prefix}.{rel}" if prefix else rel
        if not _matches(name, skip):
            out[name] = m
    return out


def layer_weight_shape(module: nn.Module) -> Tuple[int, int]:
    """(rows, cols) = (out_features, in_features) of a Linear or Conv1D layer."""
    rows, cols = weight_tensor(module).shape
    return (int(cols), int(rows)) if is_conv1d(module) else (int(rows), int(cols))


def layer_weight(module: nn.Module) -> np.ndarray:
    """The layer's weight as a float32 rows x cols (out_features x in_features) NumPy array, always a copy."""
    w = weight_tensor(module).detach()
    if is_conv1d(module):
        w = w.t()
    return np.array(w.to("cpu", torch.float32).numpy(), dtype=np.float32, order="C", copy=True)


def set_layer_weight(module: nn.Module, weight: np.ndarray) -> None:
    """Write a rows x cols matrix into the layer (transposed for Conv1D), cast to the layer's dtype/device."""
    src = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    if is_conv1d(module):
        src = src.t()
    param = weight_tensor(module)
    if tuple(src.shape) != tuple(param.shape):
        raise ValueError(f"weight must be {tuple(param.shape)}, got {tuple(src.shape)}")
    with torch.no_grad():
        param.copy_(src)


def _module_names(model: nn.Module) -> Dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_blocks(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """The model's repeated blocks: among the ``nn.ModuleList``s whose children all have one class and hold at
    least one linear layer, the one holding the most parameters (so a per-layer list of MoE experts never wins
    over the list of layers). Returns (dotted path, list). ValueError when there is none."""
    best: Optional[Tuple[int, int, str, nn.ModuleList]] = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        if len({type(c) for c in m}) != 1 or not any(_is_linear(x) for x in m[0].modules()):
            continue
        key = (_param_count(m), len(m))
        if best is None or key > best[:2]:
            best = (key[0], key[1], name, m)
    if best is None:
        raise ValueError(
            "found no nn.ModuleList of same-class blocks holding linear layers in the model; "
            "name the blocks with blocks='path.to.layers' or a list of modules"
        )
    return best[2], best[3]


def resolve_blocks(
    model: nn.Module, blocks: Union[None, str, Sequence[nn.Module]] = None
) -> List[Tuple[str, nn.Module]]:
    """(full dotted name, module) of every block: found generically when ``blocks`` is None, else from a
    dotted path ('model.layers') or a sequence of submodules of ``model``."""
    if blocks is None:
        path, lst = find_blocks(model)
        return [(f"{path}.{i}" if path else str(i), b) for i, b in enumerate(lst)]
    if isinstance(blocks, str):
        try:
            lst = cast(nn.ModuleList, model.get_submodule(blocks))
        except AttributeError as e:
            raise ValueError(f"blocks={blocks!r} names no submodule of the model ({e})") from None
        if not isinstance(lst, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"blocks={blocks!r} must name an nn.ModuleList or nn.Sequential, got {type(lst).__name__}")
        return [(f"{blocks}.{i}", b) for i, b in enumerate(lst)]
    names = _module_names(model)
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, nn.Module) or id(b) not in names:
            raise ValueError(f"blocks[{i}] is not a submodule of the model")
        out.append((names[id(b)], b))
    if not out:
        raise ValueError("blocks is empty")
    return out


class _StopForward(Exception):
    """Raised from a hook to end a model forward once the inputs we need have been seen."""


def _drop_cache(args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Replace any KV-cache argument by None: re-running a block must not append to a cache."""
    kwargs = dict(kwargs)
    for k in _CACHE_KWARGS:
        if kwargs.get(k) is not None:
            kwargs[k] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    try:
        from transformers.cache_utils import Cache  # optional

        args = tuple(None if isinstance(a, Cache) else a for a in args)
    except ImportError:
        pass
    return args, kwargs


def _first_output(out: Any) -> torch.Tensor:
    """A block returns its hidden states, or a tuple / ModelOutput whose first entry they are."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(out).__name__}")


@dataclass
class BlockInputs:
    """The calibration inputs of the current block, one entry per calibration batch.

    hidden[j] is batch j's hidden states; args[j]/kwargs[j] the other arguments the model passed to block 0
    (cache arguments replaced by None). ``advance`` replaces hidden[j] in place by the block's output, so only
    one block's activations are alive at a time."""

    hidden: List[torch.Tensor] = field(default_factory=list)
    args: List[tuple] = field(default_factory=list)
    kwargs: List[dict] = field(default_factory=list)
    hidden_key: Optional[str] = None  # set when the model passed the hidden states as a keyword

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def n_tokens(self) -> int:
        return sum(int(np.prod(h.shape[:-1])) for h in self.hidden)

    def run(self, block: nn.Module, j: int) -> torch.Tensor:
        """Block ``block`` on batch j; returns its hidden-state output."""
        if self.hidden_key is None:
            out = block(self.hidden[j], *self.args[j], **self.kwargs[j])
        else:
            out = block(*self.args[j], **{self.hidden_key: self.hidden[j]}, **self.kwargs[j])
        return _first_output(out)

    def run_all(
        self,
        block: nn.Module,
        stop_after: Sequence[nn.Module] = (),
        batches: Optional[range] = None,
        on_batch: Optional[Callable[[int], None]] = None,
    ) -> None:
        """Block on every batch (or on ``batches``), outputs discarded (the hooks on the block's layers see its
        inputs).

        With ``stop_after``, each batch's forward ends as soon as every one of those modules has run once:
        the rest of the block is not computed (callers pass only modules known to run once per forward).
        ``on_batch(j)`` is called before batch j runs."""
        remaining = [0]

        def hook(module, args, output):
            remaining[0] -= 1
            if remaining[0] == 0:
                raise _StopForward

        handles = [m.register_forward_hook(hook) for m in stop_after]
        try:
            for j in range(len(self)) if batches is None else batches:
                remaining[0] = len(handles)
                if on_batch is not None:
                    on_batch(j)
                try:
                    self.run(block, j)
                except _StopForward:
                    pass
        finally:
            for h in handles:
                h.remove()

    def advance(self, block: nn.Module, on_batch: Optional[Callable[[int], None]] = None) -> None:
        """Replace every batch's hidden states by ``block``'s output: the inputs of the next block
        (``on_batch(j)`` is called before batch j runs)."""
        for j in range(len(self)):
            if on_batch is not None:
                on_batch(j)
            self.hidden[j] = self.run(block, j)


@contextlib.contextmanager
def _no_kv_cache(model: nn.Module) -> Iterator[None]:
    """HF models build a KV cache during forward unless config.use_cache is False."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None) if config is not None else None
    if config is None or old is None:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = old


def _call_model(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict) or (hasattr(batch, "keys") and hasattr(batch, "__getitem__")):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _digest_update(h: "hashlib._Hash", obj: Any) -> None:
    """Hash a calibration batch (tensors by dtype, shape and bytes) so a resumed run can check its data."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict) or hasattr(obj, "keys"):
        for k in sorted(obj.keys()):
            h.update(str(k).encode())
            _digest_update(h, obj[k])
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            _digest_update(h, x)
    else:
        h.update(repr(obj).encode())


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Iterable[Any], select: Optional[range] = None
) -> Tuple[BlockInputs, str]:
    """Run the model on every calibration batch up to ``first_block`` and keep what that block receives.

    A batch is a tensor (``model(batch)``), a tuple (``model(*batch)``) or a mapping (``model(**batch)``).
    Returns the inputs and a SHA-256 digest of the batches. The model's own embedding, masks and position
    code run unchanged; the forward is stopped by an exception at the block, so nothing after it runs.
    ``select``: only the batches of these indices are run and kept (one rank's shard); all are hashed."""
    inputs = BlockInputs()

    def pre_hook(module, args, kwargs):
        args, kwargs = _drop_cache(tuple(args), dict(kwargs))
        if args:
            hidden, args = args[0], args[1:]
        elif "hidden_states" in kwargs:
            hidden = kwargs.pop("hidden_states")
            inputs.hidden_key = "hidden_states"
        else:
            raise ValueError(
                "the first block received no positional argument and no 'hidden_states' keyword; "
                "cannot tell which argument carries the hidden states"
            )
        if not isinstance(hidden, torch.Tensor):
            raise ValueError(f"the first block's hidden states are a {type(hidden).__name__}, not a tensor")
        inputs.hidden.append(hidden.detach())
        inputs.args.append(args)
        inputs.kwargs.append(kwargs)
        raise _StopForward

    digest = hashlib.sha256()
    handle = first_block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad(), _no_kv_cache(model):
            for j, batch in enumerate(batches):
                _digest_update(digest, batch)
                if select is not None and j not in select:
                    continue
                kept = len(inputs)
                try:
                    _call_model(model, batch)
                except _StopForward:
                    pass
                if len(inputs) != kept + 1:
                    raise ValueError(f"the model's forward on calibration batch {j} never reached the first block")
    finally:
        handle.remove()
    if not len(inputs):
        raise ValueError("calibration_batches is empty")
    return inputs, digest.hexdigest()
