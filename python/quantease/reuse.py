"""Outputs of a block's child modules kept from one calibration pass for the later ones (quantease.pipeline).

The pipeline runs a block several times on the same batches: once per true-sequential group of layers, each
after the earlier groups were quantized, and once more for the next block's inputs. A child module of the
block (a Llama block's ``self_attn``) whose linear layers all belong to groups before the first group of pass
k ran, in pass k, entirely on inputs and weights that no later pass changes: the layers quantized after pass
k run after it. Its output in pass k is therefore its output in every later pass, and those passes take it
from here instead of recomputing it (for a Llama block: the attention in the last group's pass and in the
pass that makes the next block's inputs, about a quarter of the block's calibration forwards).

A kept output is used only while its tensors are unchanged (their version counters): a model that modifies a
child's output in place gets the child recomputed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

__all__ = ["ReusedOutputs"]


def _tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _tensors(x)]
    return []


class ReusedOutputs:
    """For one block: ``layers`` its linear layers to be solved, ``group_of`` each one's group index (groups in
    run order). Call :meth:`pass_` before each pass with the index of the pass's first group (the pass that
    makes the next block's inputs: the number of groups, ``last=True``) and ``on_batch(j)`` before each batch; call
    :meth:`close` when the block is done."""

    def __init__(self, block: nn.Module, layers: Mapping[str, nn.Module], group_of: Mapping[str, int]):
        self.last_group: Dict[nn.Module, int] = {}  # child -> the last group of its layers
        for child in block.children():
            inside = {id(m) for m in child.modules()}
            groups = [group_of[name] for name, m in layers.items() if id(m) in inside and name in group_of]
            if groups:
                self.last_group[child] = max(groups)
        self.kept: Dict[nn.Module, Dict[int, Tuple[Any, List[Tuple[torch.Tensor, int]]]]] = {}
        self.batch = -1
        self._handles: List[Any] = []
        self._patched: List[Tuple[nn.Module, Any]] = []  # child, the instance forward it had (or None)

    def on_batch(self, j: int) -> None:
        self.batch = j

    def pass_(self, first_group: int, last: bool = False) -> None:
        """Set up the pass whose layers' groups start at ``first_group``: children kept earlier are replayed,
        children all of whose layers come before ``first_group`` (and are not kept yet) are recorded, unless
        this is the ``last`` pass."""
        self._unhook()
        for child, last_group in self.last_group.items():
            if child in self.kept:
                self._replay(child)
            elif last_group < first_group and not last:
                self.kept[child] = {}
                self._handles.append(child.register_forward_hook(self._record(child)))

    def _record(self, child: nn.Module):
        kept = self.kept[child]

        def hook(module, args, output):
            kept[self.batch] = (output, [(t, t._version) for t in _tensors(output)])

        return hook

    def _replay(self, child: nn.Module) -> None:
        kept = self.kept[child]
        compute = child.forward

        def forward(*args, **kwargs):
            entry = kept.get(self.batch)
            if entry is not None and all(t._version == v for t, v in entry[1]):
                return entry[0]
            kept.pop(self.batch, None)  # changed in place (or never recorded): computed again
            return compute(*args, **kwargs)

        self._patched.append((child, child.__dict__.get("forward")))
        child.forward = forward  # an instance attribute: nn.Module.__call__ looks it up first

    def _unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for child, own in self._patched:
            if own is None:
                del child.forward  # back to the class's forward
            else:
                child.forward = own
        self._patched = []

    def close(self) -> None:
        self._unhook()
        self.kept.clear()
