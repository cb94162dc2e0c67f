"""Data-parallel calibration: the batches split into shards, Hessians reduced in a canonical order.

A ``quantize_model`` run splits its calibration batches into ``shards`` contiguous shards. Run under
``torchrun`` (``distributed=True``, or found by ``distributed=None``), each rank of the torch.distributed
process group holds one shard: it captures and pushes only its own batches through each block, so the
activations stay sharded. A block's Hessians are reduced shard by shard:

    S_s = Σ_{x in shard s} x xᵀ   (each rank: its own shard, float32 GEMMs into a float64 running sum)
    H   = (2/n) (((S_0 + S_1) + S_2) + ...)   (folded in shard order on the owner rank)

Every partial sum is computed the same way wherever it is computed, and the fold always adds them in shard
order, so a run with ``shards=k`` gives the same bits on k ranks as in one process (``hessian_shards=k``);
``shards=1`` is the plain running sum. Each layer has an owner rank, chosen per true-sequential group by
solve cost (largest first, to the least loaded rank): the owner receives the partial sums of the Hessian it
needs (gloo on CPU, nccl when the model is on CUDA), solves the layer with the C++ core and broadcasts the
result (codes, grids, the dequantized weight and the record); every rank writes the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ._hessian import HessianAccumulator
from .blocks import layer_weight_shape
from .hooks import HessianCollector

__all__ = ["DataParallel", "setup", "shard_bounds", "assign_owners", "solve_cost"]

Sum = Union[np.ndarray, torch.Tensor]


def shard_bounds(n_batches: int, shards: int) -> List[range]:
    """Batches 0..n-1 in ``shards`` contiguous shards, the first ``n % shards`` one batch longer."""
    base, extra = divmod(n_batches, shards)
    out, start = [], 0
    for s in range(shards):
        stop = start + base + (1 if s < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def solve_cost(rows: int, cols: int) -> float:
    """What solving a rows x cols layer costs, up to a constant: the cols^3 factorization of H and the
    rows x cols^2 column loop of GPTQ-style solvers."""
    return float(cols) ** 3 + float(rows) * float(cols) ** 2


def assign_owners(costs: Sequence[float], world: int) -> List[int]:
    """The rank solving each item: largest cost first, to the least loaded rank (lowest rank on ties)."""
    load = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def _host(S: Sum) -> np.ndarray:
    if isinstance(S, torch.Tensor):
        S = S.to("cpu").numpy()
    return np.ascontiguousarray(S)


@dataclass
class DataParallel:
    """How one run splits its calibration batches: ``shards`` shards, one per rank of ``group`` when
    ``world`` > 1 (else all in this process). ``device``: where tensors travel (CPU for gloo, CUDA for nccl)."""

    rank: int = 0
    world: int = 1
    shards: int = 1
    group: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    created_group: bool = False  # this run initialised the process group and destroys it at the end

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ---------------------------------------------------------------------------------------------- shards

    def my_batches(self, n_batches: int) -> range:
        """The global indices of the batches this process captures and runs."""
        if n_batches < self.shards:
            raise ValueError(
                f"calibration_batches has {n_batches} batch(es), fewer than the {self.shards} shards "
                f"(hessian_shards, or the ranks of the run): each shard needs at least one batch"
            )
        if not self.distributed:
            return range(n_batches)
        return shard_bounds(n_batches, self.shards)[self.rank]

    def local_shards(self, n_local: int) -> List[range]:
        """This process's shards, as ranges of its own (local) batch list."""
        return [range(n_local)] if self.distributed else shard_bounds(n_local, self.shards)

    # ---------------------------------------------------------------------------------------------- owners

    def owners(self, layers: Mapping[str, nn.Module]) -> Dict[str, int]:
        """The rank solving each layer (all 0 in one process)."""
        names = list(layers)
        costs = [solve_cost(*layer_weight_shape(layers[n])) for n in names]
        return dict(zip(names, assign_owners(costs, self.world)))

    # ------------------------------------------------------------------------------------------- Hessians

    def hessians(
        self,
        collector: HessianCollector,
        run: Callable[[range], None],
        n_local: int,
        owners: Mapping[str, int],
    ) -> Dict[str, Tuple[Optional[np.ndarray], int]]:
        """Run this process's shards through ``run`` (the forward passes that feed ``collector``) and return
        {source: (H, n)} for every accumulator source of the collector: H where this rank owns a layer that
        reads it (None elsewhere), n the rows of all shards."""
        sources = collector.sources
        if self.distributed:
            run(range(n_local))
            return {
                src: self._reduce(collector.take_sum(src), sorted({owners[m] for m in members}))
                for src, members in sources.items()
            }
        shards = shard_bounds(n_local, self.shards)
        if len(shards) == 1:
            run(shards[0])
            counts = {src: collector.n_samples(src) for src in sources}  # before the release empties them
            return {src: (collector.hessian(src, release=True), counts[src]) for src in sources}
        folds: Dict[str, HessianAccumulator] = {}
        for shard in shards:
            run(shard)
            for src in sources:
                S, n = collector.take_sum(src)
                S = _host(S)
                fold = folds.setdefault(src, HessianAccumulator(S.shape[0], dtype=S.dtype.name))
                fold.add_sum(S, n)
                del S
        counts = {src: fold.n_samples for src, fold in folds.items()}
        return {src: (fold.hessian(release=True), counts[src]) for src, fold in folds.items()}

    def _reduce(self, own: Tuple[Sum, int], needed: List[int]) -> Tuple[Optional[np.ndarray], int]:
        """Fold every rank's partial sum in rank order on ``needed[0]``, which sends H to the other ranks of
        ``needed``. Every rank calls this for the same sources in the same order."""
        import torch.distributed as dist

        S_own, n_own = own
        root = needed[0]
        shape = tuple(S_own.shape)
        dtype_name = str(S_own.dtype).removeprefix("torch.") if isinstance(S_own, torch.Tensor) else S_own.dtype.name
        torch_dtype = getattr(torch, dtype_name)

        def wire(S: Sum) -> torch.Tensor:
            t = S if isinstance(S, torch.Tensor) else torch.from_numpy(S)
            return t.to(self.device).contiguous()

        def count(n: int = 0) -> torch.Tensor:
            return torch.tensor([n], dtype=torch.int64, device=self.device)

        if self.rank != root:
            dist.send(wire(S_own), dst=root, group=self.group)
            dist.send(count(n_own), dst=root, group=self.group)
            del S_own
            if self.rank not in needed:
                return None, 0
            H = torch.empty(shape, dtype=torch_dtype, device=self.device)
            n = count()
            dist.recv(H, src=root, group=self.group)
            dist.recv(n, src=root, group=self.group)
            return _host(H), int(n.item())
        total = HessianAccumulator(shape[0], dtype=dtype_name)
        for r in range(self.world):
            if r == self.rank:
                S, n_r = _host(S_own), n_own
                del S_own
            else:
                buf, n = torch.empty(shape, dtype=torch_dtype, device=self.device), count()
                dist.recv(buf, src=r, group=self.group)
                dist.recv(n, src=r, group=self.group)
                S, n_r = _host(buf), int(n.item())
                del buf
            total.add_sum(S, n_r)
            del S
        n_total = total.n_samples
        H_host = total.hessian(release=True)
        for r in needed[1:]:
            dist.send(wire(H_host), dst=r, group=self.group)
            dist.send(count(n_total), dst=r, group=self.group)
        return H_host, n_total

    # -------------------------------------------------------------------------------------- agreement

    def broadcast(self, obj: Any, src: int) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled); in one process, ``obj``."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group, device=self.device)
        return box[0]

    def min(self, value: int) -> int:
        """The smallest ``value`` over the ranks."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.created_group = False


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def setup(distributed: Optional[bool], hessian_shards: Optional[int], device: torch.device) -> DataParallel:
    """The run's DataParallel. distributed: True (an initialised process group, or the torchrun environment
    to initialise one from), False (this process alone), None (True when either is there). The backend of a
    group this creates is nccl for a CUDA ``device``, gloo otherwise. hessian_shards: None (the world size)
    or a positive integer; a distributed run needs it equal to the world size."""
    if distributed is not None and not isinstance(distributed, bool):
        raise ValueError(f"distributed must be True, False or None (detect torchrun), got {distributed!r}")
    if hessian_shards is not None and (
        isinstance(hessian_shards, bool) or not isinstance(hessian_shards, (int, np.integer)) or hessian_shards < 1
    ):
        raise ValueError(f"hessian_shards must be a positive integer or None, got {hessian_shards!r}")
    dp = DataParallel(shards=int(hessian_shards or 1))
    if distributed is False:
        return dp
    import torch.distributed as dist

    if not (dist.is_available() and (dist.is_initialized() or _under_torchrun())):
        if distributed:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group or the environment "
                "torchrun sets (WORLD_SIZE > 1, MASTER_ADDR, MASTER_PORT, RANK)"
            )
        return dp
    comm = torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else torch.device("cpu")
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if comm.type == "cuda" else "gloo")
        created = True
    world = dist.get_world_size()
    if world == 1:
        if created:
            dist.destroy_process_group()
        return dp
    if hessian_shards is not None and hessian_shards != world:
        raise ValueError(
            f"hessian_shards={hessian_shards} must equal the {world} ranks of a distributed run (or be None)"
        )
    return DataParallel(rank=dist.get_rank(), world=world, shards=world, device=comm, created_group=created)
