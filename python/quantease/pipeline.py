"""The sequential (layer-by-layer) quantization pipeline of GPTQ / QuantEase for a PyTorch model.

``quantize_model`` captures what the first block receives on the calibration batches, then for each block:
collect the Hessians of its linear layers from its current inputs, solve each layer with a quantease solver,
write the quantized weights back, and run the block again — now quantized — to get the next block's inputs.
With ``true_sequential`` the layers of a block are solved in groups in the order they run ([q, k, v], [o],
[gate, up], [down] for Llama), each group's Hessians re-collected after the earlier groups were quantized.
Only one block's activations are alive at a time, and the model is never copied.

Forward passes per block: one batch traced (run order and shared inputs, see trace_input_groups), one pass
per group that stops right after the group's last layer ran (each re-runs the earlier, now quantized,
groups: their outputs changed), and one full pass of the quantized block for the next block's inputs.
Layers that share an input share one Hessian accumulator. Solvers that need no Hessian (rtn, easyquant) get
no forward pass at all: each layer is solved from its weight alone, and ``calibration_batches`` may be None.

``report.phase_seconds`` splits the run's wall time: ``forward`` (the model's and blocks' forward passes; in
a distributed run also the Hessians' reduction), ``hessian`` (accumulating the Hessians, inside the forward
hooks), ``solve`` (the solver calls), ``loss`` (the layer losses and tr(W H Wᵀ) of the record), ``other``
(checkpoints, bookkeeping).

Data-parallel (``distributed=True`` or inside torchrun): every rank pushes its shard of the calibration batches
through each block, the Hessians' partial sums are folded in shard order on the ranks that solve the layers,
and the results are broadcast; the weights are the bits of one process summing the same shards
(``hessian_shards``). See quantease.distributed.

Resume: with ``checkpoint_dir``, every finished block is written atomically (temporary file, fsync,
os.replace) as ``block_00000.pt``...: its quantized weights, its per-layer records and the run's settings.
Activations are NOT saved (they are as large as a block's output on all calibration tokens, e.g. 4 GiB per
block for a 7B model on 128 x 2048 tokens); a rerun loads the finished blocks' weights and recomputes the
next block's inputs by running the calibration batches through the quantized finished blocks, which is the
very computation the uninterrupted run did, so the final weights are bit-identical (given deterministic
kernels and the same thread count; checked by tests/test_torch_pipeline.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ._core import NumericalError
from ._loss import layer_loss
from ._validate import check_bits
from .blocks import (
    BlockInputs,
    capture_block_inputs,
    layer_weight,
    layer_weight_shape,
    linear_layers,
    resolve_blocks,
    set_layer_weight,
    weight_tensor,
)
from .distributed import DataParallel, setup
from .gguf import TYPES
from .gguf_mixes import TypeChoice, TypePlan, layer_types
from .hooks import HessianCollector, trace_input_groups
from .offload import Offload
from .reuse import ReusedOutputs
from .solvers import NAMES, Solver, get_solver

__all__ = ["quantize_model", "QuantReport", "LayerRecord", "METHODS"]

log = logging.getLogger("quantease")

#: Every solver the pipeline knows (the registry's names).
METHODS = NAMES
_CHECKPOINT_FORMAT = 1


@dataclass
class LayerRecord:
    """What happened to one layer. loss = Σ_rows (w - ŵ)ᵀ H (w - ŵ); relative_loss = loss / tr(W H Wᵀ);
    both None for a solver that needs no H (no calibration data reached it)."""

    block: int
    name: str
    method: str
    bits: int
    group_size: int
    shape: Tuple[int, int]  # rows x cols (out x in features)
    loss: Optional[float]
    relative_loss: Optional[float]
    seconds: float  # solver wall time
    damp: Optional[float]  # damping the solver used (relative to mean diag H), None if none
    n_samples: int  # calibration rows (tokens) behind the Hessian (0: none was collected)
    group: int  # input group inside the block, in run order (see trace_input_groups)
    gguf: Optional[str] = None  # GGUF block type of the layer (quantize_model(..., gguf=...)), else None


_COLUMNS = (
    ("block", "block"),
    ("layer", "name"),
    ("method", "method"),
    ("bits", "bits"),
    ("group", "group_size"),
    ("shape", "shape"),
    ("loss", "loss"),
    ("rel. loss", "relative_loss"),
    ("damp", "damp"),
    ("tokens", "n_samples"),
    ("seconds", "seconds"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


class QuantReport(list):
    """The per-layer records of a ``quantize_model`` run (a list of LayerRecord, in solve order).

    ``results`` maps layer names to the solvers' QuantResult when the run kept them (``keep_results=True``);
    ``resumed_blocks`` is the number of blocks taken from a checkpoint; ``seconds`` the run's wall time and
    ``phase_seconds`` its split (see the module docstring); ``gguf`` the GGUF type of every layer (a TypePlan)
    when the run had ``gguf=``, for export.save_gguf."""

    def __init__(self, records: Iterable[LayerRecord] = ()):
        super().__init__(records)
        self.results: Dict[str, Any] = {}
        self.gguf: Optional[TypePlan] = None
        self.resumed_blocks = 0
        self.seconds = 0.0
        self.phase_seconds: Dict[str, float] = {}

    def to_dicts(self) -> List[Dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self]

    def to_markdown(self) -> str:
        head = "| " + " | ".join(c for c, _ in _COLUMNS) + " |"
        rule = "|" + "|".join("---" for _ in _COLUMNS) + "|"
        rows = ["| " + " | ".join(_fmt(getattr(r, f)) for _, f in _COLUMNS) + " |" for r in self]
        return "\n".join([head, rule, *rows])

    def summary(self) -> str:
        """One paragraph: layers, the relative layer loss (mean, worst layer), the run's seconds and phase split."""
        rel = [(r.relative_loss, r.name) for r in self if r.relative_loss is not None]
        parts = [f"{len(self)} layers"]
        if self.resumed_blocks:
            parts.append(f"{self.resumed_blocks} block(s) from the checkpoint")
        if rel:
            worst = max(rel)
            parts.append(
                f"relative layer loss mean {np.mean([v for v, _ in rel]):.4g}, worst {worst[0]:.4g} ({worst[1]})"
            )
        text = ", ".join(parts) + f"; {self.seconds:.1f} s"
        if self.phase_seconds:
            text += " (" + ", ".join(f"{k} {v:.1f} s" for k, v in self.phase_seconds.items()) + ")"
        return text

    def __str__(self) -> str:
        return self.to_markdown()


# ---------------------------------------------------------------------------------------------- solvers


def _resolve_solver(method: Union[str, Callable]) -> Solver:
    """The registry's solver, or a callable used as is that gets H (tests use stub solvers)."""
    if callable(method):
        return Solver(getattr(method, "__name__", type(method).__name__), method, True, "a caller's solver")
    return get_solver(method)


# ------------------------------------------------------------------------------------------- checkpoints


def _to_storable(value: Any) -> Any:
    """NumPy -> torch tensors and plain Python, so torch.load(weights_only=True) can read it back."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _to_storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_storable(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": type(value).__name__,
            **{f.name: _to_storable(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    return value


def _from_storable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, list):
        return [_from_storable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_from_storable(v) for v in value)
    if isinstance(value, dict):
        kind = value.get("__dataclass__")
        fields = {k: _from_storable(v) for k, v in value.items() if k != "__dataclass__"}
        if kind == "SparseOutliers":
            from .result import SparseOutliers

            fields["shape"] = tuple(fields["shape"])
            return SparseOutliers(**fields)
        if kind == "QuantResult":
            from .result import QuantResult

            return QuantResult(**fields)
        if kind == "GGUFBlocks":  # a gguf= result's stored block parameters (quantease.gguf.pack reads them)
            from .gguf import GGUFBlocks

            return GGUFBlocks(**fields)
        return types.SimpleNamespace(**fields) if kind else fields
    return value


def _result_to_storable(result: Any) -> Any:
    if dataclasses.is_dataclass(result):
        return _to_storable(result)
    return {"__dataclass__": type(result).__name__, **{k: _to_storable(v) for k, v in vars(result).items()}}


class _Checkpoint:
    """One file per finished block in ``directory``; see the module docstring."""

    def __init__(self, directory: str, config: Dict[str, Any], writer: bool = True):
        self.directory = directory
        self.config = config
        os.makedirs(directory, exist_ok=True)
        # Temporary files of a run killed while saving: never renamed, so never part of the checkpoint. Only
        # the writing process (rank 0 of a distributed run) touches the directory.
        if writer:
            for name in os.listdir(directory):
                if name.startswith("block_") and ".pt.tmp" in name:
                    os.remove(os.path.join(directory, name))

    def path(self, i: int) -> str:
        return os.path.join(self.directory, f"block_{i:05d}.pt")

    def finished(self, n_blocks: int) -> int:
        """How many blocks, from the first, have a checkpoint file."""
        done = 0
        while done < n_blocks and os.path.exists(self.path(done)):
            done += 1
        return done

    def save(
        self,
        i: int,
        block_name: str,
        weights: Dict[str, torch.Tensor],
        records: List[LayerRecord],
        results: Optional[Dict[str, Any]],
    ) -> None:
        payload = {
            "format": _CHECKPOINT_FORMAT,
            "config": self.config,
            "block": i,
            "block_name": block_name,
            "weights": {k: v.detach().to("cpu").clone() for k, v in weights.items()},
            "records": [dataclasses.asdict(r) for r in records],
            "results": None if results is None else {k: _result_to_storable(v) for k, v in results.items()},
        }
        final = self.path(i)
        tmp = f"{final}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        try:  # make the rename itself durable
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def load(self, i: int, block_name: str) -> Optional[Dict[str, Any]]:
        """The payload of finished block i, or None when it has not finished. ValueError when the file was
        written by a run with other settings or data."""
        path = self.path(i)
        if not os.path.exists(path):
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a file damaged or replaced after it was written (ours are renamed complete)
            raise ValueError(
                f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); delete it to "
                f"quantize that block again"
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path}: checkpoint format {found!r}, expected {_CHECKPOINT_FORMAT}")
        old = payload["config"]
        diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} there, {self.config.get(k)!r} now" for k in diff)
            raise ValueError(
                f"checkpoint_dir {self.directory!r} belongs to a run with other settings ({shown}); "
                f"use another directory or delete it"
            )
        if payload["block"] != i or payload["block_name"] != block_name:
            raise ValueError(
                f"{path} holds block {payload['block']} ({payload['block_name']}), expected block {i} ({block_name})"
            )
        return payload


# ------------------------------------------------------------------------------------------------ pipeline


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first materialised parameter (CPU when every one is on the meta device)."""
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


class _Phases:
    """Wall seconds per phase of a run; ``other`` is what the named phases leave of the total."""

    NAMES = ("forward", "hessian", "solve", "loss")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def split(self, total: float) -> Dict[str, float]:
        out = dict(self.seconds)
        out["other"] = max(0.0, total - sum(out.values()))
        return out


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="quantize", unit="block")


def _check_ridge(hessian_ridge, gguf) -> Union[float, str]:
    """quantize_model's hessian_ridge resolved: "auto" or a float >= 0."""
    if hessian_ridge is None:
        return "auto" if gguf is not None else 0.0
    if hessian_ridge == "auto":
        return "auto"
    if isinstance(hessian_ridge, bool) or not isinstance(hessian_ridge, (int, float, np.integer, np.floating)):
        raise ValueError(f"hessian_ridge must be None, 'auto' or a number >= 0, got {hessian_ridge!r}")
    value = float(hessian_ridge)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"hessian_ridge must be None, 'auto' or a finite number >= 0, got {hessian_ridge!r}")
    return value


def ridge_strength(ridge: Union[float, str], cols: int, tokens: int) -> float:
    """λ of a layer with ``cols`` inputs whose H came from ``tokens`` rows: "auto" -> cols / tokens."""
    if ridge == "auto":
        return cols / tokens if tokens > 0 else 0.0
    return float(ridge)


def with_ridge(H: np.ndarray, strength: float) -> np.ndarray:
    """H + strength · mean(diag H) · I, as a new array (H is not modified)."""
    out = np.array(H, copy=True)
    diagonal = np.einsum("ii->i", out)
    diagonal += out.dtype.type(strength * float(np.mean(np.diagonal(H))))
    return out


@dataclass(frozen=True)
class _SolveSettings:
    """What the solves of a run's layers share (quantize_model's arguments, checked): the solver, its grid
    (bits/group_size/sym, or each layer's GGUF type), its options and the ridge on the Hessian."""

    solver: Solver
    bits: int
    group_size: int
    sym: bool
    solver_kwargs: Dict[str, Any]
    gguf_types: Optional[Dict[str, str]]  # layer name -> GGUF type (quantize_model(..., gguf=...)), else None
    ridge: Union[float, str]  # quantize_model's hessian_ridge: "auto" or λ

    def gguf(self, name: str) -> Optional[str]:
        """The GGUF type of layer ``name``; None without ``gguf=``."""
        return None if self.gguf_types is None else self.gguf_types[name]


def _solve_layer(
    settings: _SolveSettings,
    phases: _Phases,
    block_index: int,
    group: int,
    name: str,
    module: nn.Module,
    H: Optional[np.ndarray],
    n_samples: int,
) -> Tuple[LayerRecord, Any]:
    """Quantize one layer (from its Hessian, or from its weight alone when H is None) and write the
    dequantized weight back into the module. A layer with a GGUF type gets ``gguf=`` instead of
    bits/group_size/sym. The ridge regularizes the H the solver sees; the recorded loss is on the calibration H
    itself."""
    solver = settings.solver
    method = solver.name
    W = layer_weight(module)
    H_solve = H
    if H is not None and solver.needs_hessian:
        strength = ridge_strength(settings.ridge, W.shape[1], n_samples)
        if strength > 0:
            H_solve = with_ridge(H, strength)
    bits, group_size, gguf = settings.bits, settings.group_size, settings.gguf(name)
    grid: Dict[str, Any] = {"bits": bits, "group_size": group_size, "sym": settings.sym}
    if gguf is not None:  # recorded as the type's code bits and block
        grid = {"gguf": gguf}
        bits, group_size = TYPES[gguf].bits, TYPES[gguf].block_size
    t0 = time.perf_counter()
    result = solver.run(W, H_solve if solver.needs_hessian else None, **grid, **settings.solver_kwargs)
    seconds = time.perf_counter() - t0
    phases.add("solve", seconds)
    W_hat = np.asarray(result.weight)
    if W_hat.shape != W.shape:
        raise ValueError(f"{method} returned a {W_hat.shape} weight for layer {name} of shape {W.shape}")
    if not np.all(np.isfinite(W_hat)):
        raise NumericalError(f"{method} returned non-finite weights for layer {name}")
    loss: Optional[float] = None
    relative: Optional[float] = None
    if H is not None:
        t0 = time.perf_counter()
        loss = getattr(result, "loss", None) if H_solve is H else None  # the solver's is on H_solve
        loss = float(layer_loss(W, W_hat, H)) if loss is None else float(loss)
        energy = float(layer_loss(W, np.zeros_like(W), H))
        relative = loss / energy if energy > 0 else (0.0 if loss == 0 else float("inf"))
        phases.add("loss", time.perf_counter() - t0)
    damp = getattr(result, "damp", None)
    set_layer_weight(module, W_hat)
    record = LayerRecord(
        block=block_index,
        name=name,
        method=method,
        bits=bits,
        group_size=group_size,
        shape=tuple(W.shape),
        loss=loss,
        relative_loss=relative,
        seconds=seconds,
        damp=None if damp is None else float(damp),
        n_samples=n_samples,
        group=group,
        gguf=gguf,
    )
    log.info(
        "block %d %s: %s %s loss=%s rel=%s damp=%s tokens=%d %.2fs",
        block_index,
        name,
        method,
        gguf or f"{bits}-bit g{group_size}",
        _fmt(loss),
        _fmt(relative),
        _fmt(damp),
        n_samples,
        seconds,
    )
    return record, result


def _block_layers(block_name: str, block: nn.Module, skip, settings: _SolveSettings) -> Dict[str, nn.Module]:
    layers = linear_layers(block, prefix=block_name, skip=skip)
    if settings.gguf_types is not None:
        # Layers whose rows no block type divides stay in float, as llama.cpp keeps them in F16.
        layers = {n: m for n, m in layers.items() if settings.gguf_types[n] not in ("F16", "F32")}
    return layers


def _quantize_block_without_data(
    i: int,
    block_name: str,
    block: nn.Module,
    *,
    settings: _SolveSettings,
    skip,
    on_layer,
    bar,
    phases: _Phases,
) -> Tuple[List[LayerRecord], Dict[str, Any]]:
    """A block of a solver that needs no Hessian: every layer from its weight alone, no forward pass."""
    records: List[LayerRecord] = []
    results: Dict[str, Any] = {}
    for k, (name, module) in enumerate(_block_layers(block_name, block, skip, settings).items()):
        if bar is not None:
            bar.set_postfix_str(".".join(name.split(".")[-2:]))
        record, result = _solve_layer(settings, phases, i, k, name, module, None, 0)
        records.append(record)
        results[name] = result
        if on_layer is not None:
            on_layer(record, result, None)
    return records, results


def _advance(block: nn.Module, inputs: BlockInputs, on_batch, phases: _Phases) -> None:
    """The next block's inputs: every batch through the quantized block."""
    t0 = time.perf_counter()
    with torch.no_grad():
        inputs.advance(block, on_batch=on_batch)
    phases.add("forward", time.perf_counter() - t0)


def _quantize_block(
    i: int,
    block_name: str,
    block: nn.Module,
    inputs: BlockInputs,
    *,
    settings: _SolveSettings,
    true_sequential,
    skip,
    hessian_dtype,
    on_layer,
    bar,
    phases: _Phases,
    dp: DataParallel,
    advance: bool,
) -> Tuple[List[LayerRecord], Dict[str, Any]]:
    """Solve the block's layers group by group; with ``advance``, then replace ``inputs`` by the quantized
    block's outputs (the next block's inputs)."""
    layers = _block_layers(block_name, block, skip, settings)
    if not layers:
        if advance:
            _advance(block, inputs, None, phases)
        return [], {}
    # One forward of the first batch finds the run order and which layers share an input.
    t0 = time.perf_counter()
    trace = trace_input_groups(layers, lambda: inputs.run(block, 0))
    phases.add("forward", time.perf_counter() - t0)
    groups = trace.groups
    for name in trace.never_called:
        log.warning("block %d: layer %s never ran on the calibration data; left unquantized", i, name)
    # Not true-sequential: every group's Hessian from one pass over the unquantized block.
    passes = groups if true_sequential else [sum(groups, [])]
    # A collection pass can end once its layers have run, when every layer runs once per forward.
    can_stop = all(c == 1 for n, c in trace.calls.items() if n not in trace.never_called)
    group_of = {name: g for g, grp in enumerate(groups) for name in grp}
    records: List[LayerRecord] = []
    results: Dict[str, Any] = {}
    # Children of the block that no later pass changes are computed once (see quantease.reuse); only where
    # every layer runs once per forward, so that run order says what each child's output depends on.
    reused = ReusedOutputs(block, layers, group_of) if can_stop else None
    on_batch = None if reused is None else reused.on_batch
    try:
        for k, names in enumerate(passes):
            group_layers = {n: layers[n] for n in names}
            collector = HessianCollector(group_layers, dtype=hessian_dtype, shared=[g for g in groups if g[0] in names])
            stop_after = [layers[n] for n in names] if can_stop and k + 1 < len(passes) else ()
            owners = dp.owners(group_layers)
            if reused is not None:
                reused.pass_(group_of[names[0]])

            def run_batches(batches: range, stop: Sequence[nn.Module] = stop_after) -> None:
                inputs.run_all(block, stop_after=stop, batches=batches, on_batch=on_batch)

            t0 = time.perf_counter()
            with collector, torch.no_grad():
                hessians = dp.hessians(collector, run_batches, len(inputs), owners)
            phases.add("forward", time.perf_counter() - t0 - collector.seconds)
            phases.add("hessian", collector.seconds)
            source_of = {m: src for src, members in collector.sources.items() for m in members}
            del collector
            # Each rank solves the layers it owns, then every result travels from its owner, in run order.
            solved: Dict[str, Tuple[LayerRecord, Any]] = {}
            for name in names:
                if owners[name] != dp.rank:
                    continue
                if bar is not None:
                    bar.set_postfix_str(".".join(name.split(".")[-2:]))
                H, n_samples = hessians[source_of[name]]
                if H is None:  # the reduction sends every owner the Hessian of its layers
                    raise RuntimeError(f"rank {dp.rank} solves {name} but received no Hessian for it")
                solved[name] = _solve_layer(settings, phases, i, group_of[name], name, layers[name], H, n_samples)
            for name in names:
                record, result = dp.broadcast(solved.pop(name, None), src=owners[name])
                if owners[name] != dp.rank:
                    set_layer_weight(layers[name], np.asarray(result.weight))
                records.append(record)
                results[name] = result
                if on_layer is not None:
                    on_layer(record, result, hessians[source_of[name]][0])
            del hessians
        if advance:
            if reused is not None:
                reused.pass_(len(groups), last=True)
            _advance(block, inputs, on_batch, phases)
    finally:
        if reused is not None:
            reused.close()
    return records, results


def quantize_model(
    model: nn.Module,
    calibration_batches: Optional[Iterable[Any]],
    method: Union[str, Callable] = "quantease",
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    true_sequential: bool = True,
    blocks: Union[None, str, Sequence[nn.Module]] = None,
    skip: Sequence[str] = ("lm_head",),
    checkpoint_dir: Optional[str] = None,
    progress: bool = True,
    solver_kwargs: Optional[Dict[str, Any]] = None,
    *,
    hessian_dtype: str = "float64",
    gguf: Optional[TypeChoice] = None,
    hessian_ridge: Union[None, float, str] = None,
    keep_results: Optional[bool] = None,
    on_layer: Optional[Callable[[LayerRecord, Any, Optional[np.ndarray]], None]] = None,
    distributed: Optional[bool] = None,
    hessian_shards: Optional[int] = None,
    offload: Optional[Offload] = None,
) -> QuantReport:
    """Quantize every linear layer of the model's repeated blocks in place, block by block.

    model: a PyTorch model (HF transformers decoder or encoder, or any model whose blocks sit in an
        nn.ModuleList); it is modified in place: each quantized layer's weight becomes the solver's
        dequantized weight (cast to the layer's dtype).
    calibration_batches: iterable of model inputs, each a tensor (``model(x)``), a tuple (``model(*x)``) or a
        mapping (``model(**x)``), e.g. {"input_ids": ..., "attention_mask": ...}. Iterated once. Not used
        (may be None) by the solvers that need no Hessian (rtn, easyquant): they run no forward pass.
    method: a name of the solver registry ``quantease.solvers`` -- "rtn", "gptq", "quantease" (our best
        QuantEase: from GPTQ's result), "quantease-paper" (the paper's schedule), "easyquant", "leanquant" --
        or a callable ``f(W, H, *, bits, group_size, sym, **solver_kwargs) -> QuantResult``.
    bits, group_size, sym, solver_kwargs: passed to the solver (group_size=-1: one grid per row).
    true_sequential: solve a block's layers group by group in run order, re-collecting each group's Hessians
        with the earlier groups quantized; else all from the unquantized block.
    blocks: None (found by ``find_blocks``), a dotted path ('model.layers') or a list of submodules.
    skip: layer-name patterns left in full precision (a full name, a name component, or a glob).
    checkpoint_dir: resume directory (see module docstring); a finished run's directory returns at once.
    hessian_dtype: accumulator precision, "float64" or "float32".
    gguf: solve every layer on a llama.cpp GGUF block type instead of bits/group_size/sym: a mix or type name
        ("Q4_0", "IQ4_NL", "Q4_K_M", "Q3_K_M", ...: each layer gets the type llama-quantize gives it in that
        file type, see quantease.gguf_mixes), a mapping from every layer name to a type, or a callable
        ``f(name) -> type``. The report's ``gguf`` then holds the types, for quantease.export.save_gguf.
    hessian_ridge: the solvers see H + λ·mean(diag H)·I instead of the calibration H (a ridge on the sample
        covariance; GPTQ's own ``damp`` comes on top). "auto": λ = cols / tokens, the p/n of the sample
        covariance, which sets how far its spectrum strays from the population's (0.07 for a 576-wide layer
        on 8 192 tokens, 0.19 for a 1536-wide one, 0.009 / 0.023 on 65 536); a float: that λ; None (default):
        "auto" with ``gguf`` (llama.cpp's diagonal-only search cannot overfit the calibration set, and GPTQ
        on the raw H of 8 192 tokens did: bench/README "bench_gguf.py"), else 0. Recorded losses are on the
        calibration H itself.
    keep_results: keep every layer's QuantResult (codes, scales, zeros, ...) in ``report.results`` (and in
        the checkpoint), e.g. for quantease.export; default: only when ``gguf`` is given without ``offload``
        (an offloaded run writes them to its output, block by block).
    on_layer: called as ``on_layer(record, result, H)`` after each layer is written back (H is None on the
        ranks of a distributed run that hold no copy of it: those that solved no layer reading that input).
    distributed: data-parallel over the ranks of a torch.distributed run (see quantease.distributed): True, False,
        or None (when a process group is initialised or torchrun's environment is set; the group is created
        then, gloo on CPU, nccl for a CUDA model). Every rank passes the same calibration_batches and gets the
        same weights and report; rank 0 writes the checkpoints.
    hessian_shards: the calibration batches fall into this many contiguous shards whose Hessian partial sums
        are added in shard order; None: one per rank (1 in one process). A run on k ranks gives the same bits
        as one process with ``hessian_shards=k``.
    offload: a model larger than RAM (quantease.offload): ``model`` is ``offload.empty_model(path)``, its
        parameters on the meta device; ``Offload(path, out)`` reads one block at a time from the safetensors
        files at ``path`` and streams each quantized block to ``out`` (safetensors shards, or a GGUF file with
        ``format="gguf"``), so memory holds about one block.

    Returns a QuantReport (list of LayerRecord; ``.summary()``, ``.to_markdown()``, ``.phase_seconds``)."""
    solver = _resolve_solver(method)
    if solver.needs_hessian and calibration_batches is None:
        raise ValueError(f"method {solver.name!r} needs calibration_batches (its solver takes a Hessian)")
    bits = check_bits(bits)
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, (int, np.integer))
        or not (group_size == -1 or group_size > 0)
    ):
        raise ValueError(f"group_size must be -1 or a positive integer, got {group_size!r}")
    ridge = _check_ridge(hessian_ridge, gguf)
    if hessian_dtype not in ("float64", "float32"):
        raise ValueError(f"hessian_dtype must be 'float64' or 'float32', got {hessian_dtype!r}")
    if isinstance(skip, str):
        skip = (skip,)
    solver_kwargs = dict(solver_kwargs or {})
    block_list = resolve_blocks(model, blocks)
    # An offloaded run streams its results to the output instead: the report would hold the whole model's codes.
    keep_results = (gguf is not None and offload is None) if keep_results is None else bool(keep_results)
    plan = None
    if gguf is not None:
        config = getattr(model, "config", None)
        n_head = int(getattr(config, "num_attention_heads", 1) or 1)
        shapes = {
            name: layer_weight_shape(module)
            for block_name, block in block_list
            for name, module in linear_layers(block, prefix=block_name, skip=skip).items()
        }
        n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
        plan = layer_types(
            gguf, shapes, n_layer=len(block_list), n_head=n_head, n_head_kv=n_head_kv, imatrix=solver.needs_hessian
        )
    elif group_size != -1:
        # Fail before the (long) calibration forward rather than at the first odd layer, blocks later.
        for block_name, block in block_list:
            for name, module in linear_layers(block, prefix=block_name, skip=skip).items():
                cols = layer_weight_shape(module)[1]
                if cols % group_size:
                    raise ValueError(
                        f"group_size={group_size} does not divide the {cols} input features of "
                        f"layer {name}; use a divisor of it or -1 (one grid per row)"
                    )
    t_start = time.perf_counter()
    dp = setup(distributed, hessian_shards, _model_device(model))
    was_training = model.training
    model.eval()
    report = QuantReport()
    report.gguf = plan
    phases = _Phases()
    bar = None
    try:
        if offload is not None:
            offload.begin(model, block_list, plan=plan, write=dp.rank == 0)
        inputs: Optional[BlockInputs] = None  # None: a solver without Hessian, no forward pass
        digest = None
        if solver.needs_hessian and calibration_batches is not None:
            t0 = time.perf_counter()
            select = None
            if dp.shards > 1:  # the shards need the number of batches
                calibration_batches = list(calibration_batches)
                select = dp.my_batches(len(calibration_batches))
            inputs, digest = capture_block_inputs(model, block_list[0][1], calibration_batches, select=select)
            phases.add("forward", time.perf_counter() - t0)
        if offload is not None:
            offload.captured(model)
        # Results go into the checkpoints when the report keeps them or a streamed GPTQ export needs them.
        store_results = keep_results or (offload is not None and offload.needs_results)
        ckpt = None
        start = 0
        if checkpoint_dir is not None:
            config = {
                "method": solver.name,
                "bits": int(bits),
                "group_size": int(group_size),
                "sym": bool(sym),
                "true_sequential": bool(true_sequential),
                "skip": list(skip),
                "hessian_dtype": hessian_dtype,
                "solver_kwargs": repr(sorted(solver_kwargs.items())),
                "blocks": [name for name, _ in block_list],
                "calibration_sha256": digest,
                "gguf": None if plan is None else repr(sorted(plan.types.items())),
            }
            if ridge != 0.0:  # the weights depend on it; absent when off, so older checkpoints still match
                config["hessian_ridge"] = ridge
            if dp.shards != 1:  # the Hessians' summation order, hence the bits of the weights
                config["hessian_shards"] = dp.shards
            ckpt = _Checkpoint(checkpoint_dir, config, writer=dp.rank == 0)
            start = dp.min(ckpt.finished(len(block_list)))
            # Resume: the finished blocks take their quantized weights from the checkpoint and recompute the
            # inputs of the first unfinished one.
            for i, (block_name, block) in enumerate(block_list[:start]):
                payload = ckpt.load(i, block_name)
                if payload is None:
                    raise ValueError(f"{ckpt.path(i)} disappeared while resuming from {checkpoint_dir!r}")
                if store_results and payload["results"] is None:
                    raise ValueError(
                        f"{ckpt.path(i)} was written without keep_results; "
                        f"rerun without keep_results (and without a GPTQ offload) or use another directory"
                    )
                if offload is not None:
                    offload.load_block(block_name, block)
                layers = linear_layers(block, prefix=block_name)
                for name, w in payload["weights"].items():
                    with torch.no_grad():
                        weight_tensor(layers[name]).copy_(w)
                report.extend(LayerRecord(**{**r, "shape": tuple(r["shape"])}) for r in payload["records"])
                results = {} if payload["results"] is None else payload["results"]
                results = {k: _from_storable(v) for k, v in results.items()}
                if keep_results:
                    report.results.update(results)
                del payload
                if inputs is not None and i + 1 < len(block_list):
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        inputs.advance(block)
                    phases.add("forward", time.perf_counter() - t0)
                if offload is not None:
                    offload.store_block(i, block_name, block, results, write=dp.rank == 0)
                del results
            report.resumed_blocks = start
            if start:
                log.info("resuming after %d finished block(s) from %s", start, checkpoint_dir)
        bar = _progress_bar(len(block_list), start, progress and dp.rank == 0)
        settings = _SolveSettings(
            solver=solver,
            bits=int(bits),
            group_size=int(group_size),
            sym=sym,
            solver_kwargs=solver_kwargs,
            gguf_types=None if plan is None else plan.types,
            ridge=ridge,
        )
        common: Dict[str, Any] = dict(settings=settings, skip=skip, on_layer=on_layer, bar=bar, phases=phases)
        for i in range(start, len(block_list)):
            block_name, block = block_list[i]
            if offload is not None:
                offload.load_block(block_name, block)
            if inputs is not None:
                records, results = _quantize_block(
                    i,
                    block_name,
                    block,
                    inputs,
                    true_sequential=true_sequential,
                    hessian_dtype=hessian_dtype,
                    dp=dp,
                    advance=i + 1 < len(block_list),
                    **common,
                )
            else:
                records, results = _quantize_block_without_data(i, block_name, block, **common)
            report.extend(records)
            if keep_results:
                report.results.update(results)
            if ckpt is not None and dp.rank == 0:
                layers = linear_layers(block, prefix=block_name)
                ckpt.save(
                    i,
                    block_name,
                    {r.name: weight_tensor(layers[r.name]) for r in records},
                    records,
                    results if store_results else None,
                )
            if offload is not None:  # the quantized block written out, its memory freed
                offload.store_block(i, block_name, block, results, write=dp.rank == 0)
            del results
            if bar is not None:
                bar.update(1)
        if offload is not None and dp.rank == 0:
            offload.finish()
    finally:
        if bar is not None:
            bar.close()
        if offload is not None:
            offload.close()
        model.train(was_training)
        dp.close()
    report.seconds = time.perf_counter() - t_start
    report.phase_seconds = phases.split(report.seconds)
    return report
