"""Forward hooks on the linear layers of a PyTorch model: their Hessians and the order they run in.

``HessianCollector`` accumulates ``H = (2/n) Σ x xᵀ`` over every input row x (one per token) that reaches a
linear layer (``nn.Linear``, HF ``Conv1D``), and ``trace_input_groups`` finds which layers of a block read the
same input tensor, in the order they run -- the true-sequential sub-order ([q, k, v], [o], [gate, up], [down]
for a Llama block). The pipeline (quantease.pipeline) uses both; quantease.torch re-exports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ._hessian import HessianAccumulator
from .blocks import is_conv1d, linear_layers, weight_tensor
from .device_hessian import DeviceHessianAccumulator

__all__ = ["HessianCollector", "trace_input_groups", "LayerTrace"]

ACCUMULATORS = ("auto", "core", "device")


def _accumulator(module: nn.Module, dtype: str, where: str) -> Union[HessianAccumulator, DeviceHessianAccumulator]:
    """The C++ accumulator for a layer on the CPU; the device one for a layer on a GPU ("auto"), or as asked."""
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if where not in ACCUMULATORS:
        raise ValueError(f"accumulator must be one of {', '.join(ACCUMULATORS)}, got {where!r}")
    on_device = where == "device" or (where == "auto" and weight_tensor(module).device.type not in ("cpu", "meta"))
    cols = _in_features(module)
    return DeviceHessianAccumulator(cols, dtype=dtype) if on_device else HessianAccumulator(cols, dtype=dtype)


def _in_features(module: nn.Module) -> int:
    shape = weight_tensor(module).shape
    return int(shape[0] if is_conv1d(module) else shape[1])


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    raise ValueError("a linear layer was called without a tensor input")


def _as_rows(x: torch.Tensor, cols: int) -> np.ndarray:
    """The layer input as an n x cols float32 C-contiguous array; no copy when it already is one on the CPU."""
    return np.ascontiguousarray(x.detach().reshape(-1, cols).to("cpu", torch.float32).numpy())


class HessianCollector:
    """Accumulates ``H = (2/n) Σ x xᵀ`` of the inputs of linear layers, through forward hooks.

    ``layers`` maps names to ``nn.Linear`` / ``Conv1D`` modules (or is a module: all its linear layers).
    ``shared`` lists groups of names known to read the same input tensor (from ``trace_input_groups``): a
    group keeps one accumulator, fed by its first member only, and every member gets that Hessian.
    Inputs are flattened to (tokens, in_features) float32 rows (no copy when the input already is a
    contiguous float32 CPU tensor) and accumulated by the C++ ``quantease.HessianAccumulator`` (streaming
    rank-k updates, GIL released), in float64 by default. A layer on a GPU accumulates on its device instead
    (``DeviceHessianAccumulator``: the activations stay there, only the finished sum crosses to the host);
    ``accumulator="core"`` or ``"device"`` forces one kind. Use as a context manager (hooks removed on exit)
    or call ``remove()``.
    """

    def __init__(
        self,
        layers: Union[nn.Module, Mapping[str, nn.Module]],
        *,
        dtype: str = "float64",
        shared: Sequence[Sequence[str]] = (),
        accumulator: str = "auto",
    ):
        if isinstance(layers, nn.Module):
            layers = linear_layers(layers)
        self.layers: Dict[str, nn.Module] = dict(layers)
        self.dtype = dtype
        owner = {}  # name -> name of the layer whose accumulator it uses
        for group in shared:
            for name in group:
                if name not in self.layers:
                    raise ValueError(f"shared names {name!r}, which is not among the collected layers")
                owner[name] = group[0]
        self._owner = {name: owner.get(name, name) for name in self.layers}
        self._acc = {
            name: _accumulator(m, dtype, accumulator) for name, m in self.layers.items() if self._owner[name] == name
        }
        self.seconds = 0.0  # wall time spent in the hooks (conversion + accumulation), for phase splits
        self._handles = [
            m.register_forward_hook(self._hook(name), with_kwargs=True)
            for name, m in self.layers.items()
            if self._owner[name] == name
        ]

    def _hook(self, name: str) -> Callable:
        acc = self._acc[name]
        cols = acc.cols
        if isinstance(acc, DeviceHessianAccumulator):

            def device_hook(module, args, kwargs, output):  # asynchronous on a GPU: the time to queue the work
                t0 = time.perf_counter()
                acc.add(_layer_input(args, kwargs))
                self.seconds += time.perf_counter() - t0

            return device_hook

        def hook(module, args, kwargs, output):
            t0 = time.perf_counter()
            acc.add(_as_rows(_layer_input(args, kwargs), cols))
            self.seconds += time.perf_counter() - t0

        return hook

    @property
    def names(self) -> List[str]:
        return list(self.layers)

    def n_samples(self, name: str) -> int:
        """Rows (tokens) accumulated for layer ``name``."""
        return int(self._acc[self._owner[name]].n_samples)

    def hessian(self, name: str, *, release: bool = False) -> np.ndarray:
        """(2/n) Σ x xᵀ for layer ``name``: in_features x in_features, in the accumulator's dtype, on the host.
        release=True hands the accumulator's memory over (no copy) and empties it, for every layer sharing it."""
        return self._acc[self._owner[name]].hessian(release=release)

    @property
    def sources(self) -> Dict[str, List[str]]:
        """{name of the layer whose accumulator is used: every layer using it}, in the order of ``layers``."""
        out: Dict[str, List[str]] = {}
        for name, source in self._owner.items():
            out.setdefault(source, []).append(name)
        return out

    def take_sum(self, source: str) -> Tuple[Union[np.ndarray, torch.Tensor], int]:
        """(S = Σ x xᵀ, n) of a source's accumulator, handed over (the accumulator starts again from zero): a
        NumPy array from the C++ accumulator, a tensor on its device from a device one."""
        acc = self._acc[source]
        n = int(acc.n_samples)
        return acc.sum(release=True), n

    def hessians(self) -> Dict[str, np.ndarray]:
        return {name: self.hessian(name) for name in self.layers}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "HessianCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass
class LayerTrace:
    """What one forward showed about a block's layers (see ``trace_input_groups``)."""

    groups: List[List[str]]  # layers sharing one input tensor, groups in run order
    calls: Dict[str, int]  # how many times each layer ran
    never_called: List[str]  # layers that did not run at all


def trace_input_groups(layers: Mapping[str, nn.Module], forward: Callable[[], object]) -> LayerTrace:
    """Run ``forward()`` once with hooks on ``layers`` and group them by the input they read.

    Groups are in the order their first layer ran; consecutive layers whose input is the very same tensor
    (same storage, shape, strides, and not modified in place in between) form one group. Solving group by
    group in this order, each after re-collecting its Hessian with every earlier group already quantized, is
    the true-sequential order: a layer's input can only depend on layers that ran before it, and layers of one
    group cannot depend on each other. A layer called twice counts at its first call."""
    events: List[Tuple[str, torch.Tensor, int]] = []

    def make(name):
        def hook(module, args, kwargs, output):
            x = _layer_input(args, kwargs)
            events.append((name, x, x._version))

        return hook

    handles = [m.register_forward_hook(make(n), with_kwargs=True) for n, m in layers.items()]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()

    groups: List[List[str]] = []
    calls = {n: 0 for n in layers}
    ref: Optional[Tuple[torch.Tensor, int]] = None
    for name, x, version in events:
        calls[name] += 1
        if calls[name] > 1:
            continue
        # The events keep every input alive, so equal storage pointers cannot come from a reused allocation.
        same = (
            ref is not None
            and ref[0].data_ptr() == x.data_ptr()
            and ref[0].shape == x.shape
            and ref[0].stride() == x.stride()
            and ref[0].dtype == x.dtype
            and ref[1] == version
        )
        if same:
            groups[-1].append(name)
        else:
            groups.append([name])
            ref = (x, version)
    return LayerTrace(groups=groups, calls=calls, never_called=[n for n, c in calls.items() if c == 0])
