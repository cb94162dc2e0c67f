"""The benchmark suite's calls: our solvers through the registry, the peers, and the flops of each call."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import numpy as np
from flops import gptq_flops, leanquant_flops, quantease_flops
from suite_config import Variant, log_line

import quantease
from quantease.solvers import SOLVERS


def resolve_solvers(override: Optional[Dict[str, Optional[Callable]]] = None) -> Dict[str, Optional[Callable]]:
    """name -> the registry's function; ``override`` replaces some (None: a solver reported as missing, which
    the tests use to check the plumbing of such rows)."""
    out: Dict[str, Optional[Callable]] = {name: s.function for name, s in SOLVERS.items()}
    out.update(override or {})
    return out


def call_solver(fn: Callable, method: str, W, H, bits: int, group_size: int, variant: Variant, extra: dict):
    kw = variant.kw()
    kw.update(extra)
    if method == "gptq":
        kw["act_order"] = bool(variant.act_order)
    t0 = time.perf_counter()
    if SOLVERS[method].needs_hessian:
        res = fn(W, H, bits=bits, group_size=group_size, **kw)
    else:  # the solve without H; its loss is taken below
        res = fn(W, bits=bits, group_size=group_size, **kw)
    wall = time.perf_counter() - t0
    # The solve itself (result.seconds: the compiled call), as the peers are timed around their solve only;
    # the wall time adds input conversion and the float64 layer_loss behind result.loss (about as long as a
    # GPTQ solve at 4096^2), kept in info.
    seconds = float(getattr(res, "seconds", None) or wall)
    loss = getattr(res, "loss", None)
    if loss is None:
        loss = quantease.layer_loss(W, res.weight, H)
    info = dict(getattr(res, "info", None) or {})
    info["wall_seconds"] = wall
    iters = getattr(res, "iters", None)
    if iters is not None:
        info["iters"] = int(iters)
    return float(loss), seconds, info


class Peers:
    """The peers of this run, each with its status ("ok: ..." or "not installable: <reason>"), probed on first
    use (probing gptqmodel starts its environment's interpreter: seconds)."""

    def __init__(self, enabled: bool, log=log_line):
        self.enabled = enabled
        self.log = log
        self.status: Dict[str, str] = {}
        self.fns: Dict[str, Callable] = {}
        self.leanquant_kmeans = "sklearn"
        self.installed = None

    def _probe(self, name: str) -> str:
        try:
            if name in ("gptqmodel", "hqq"):
                from bench.peers import installed

                self.installed = installed
                py, why = installed.where(name)
                return f"ok: {py}" if py else f"not installable: {why}"
            import torch

            tv = torch.__version__
            if name == "gptq-torch":
                from bench.peers.torch_gptq import gptq

                self.fns[name] = gptq
                return f"ok: torch {tv} port of the reference fasterquant (bench/peers/torch_gptq.py)"
            if name == "quantease-torch":
                from bench.peers.torch_quantease import quantease as qe

                self.fns[name] = qe
                return f"ok: torch {tv} port of the official QuantEase loop (bench/peers/torch_quantease.py)"
            if name == "leanquant-torch":
                from bench.peers.torch_leanquant import leanquant

                self.fns[name] = leanquant
                try:
                    import sklearn  # noqa: F401

                    self.leanquant_kmeans = "sklearn"
                    return (
                        f"ok: torch {tv} port of the official LeanQuant loop (bench/peers/torch_leanquant.py), "
                        "per-row sklearn KMeans as the official code, in-process"
                    )
                except ImportError:
                    self.leanquant_kmeans = "lloyd"
                    return (
                        f"ok: torch {tv} port of the official LeanQuant loop, batched torch Lloyd (sklearn not "
                        "installed, so not the official per-row KMeans)"
                    )
            return f"not installable: unknown peer {name}"
        except Exception as exc:  # noqa: BLE001 - any reason the peer is unusable is reported
            return f"not installable: {type(exc).__name__}: {exc}"

    def ok(self, name: str) -> bool:
        if not self.enabled:
            return False
        if name not in self.status:
            self.status[name] = self._probe(name)
        return self.status[name].startswith("ok")

    def run(self, name: str, W, H, bits: int, group_size: int, variant: Variant, extra: dict):
        """(loss, seconds, note) of peer ``name`` on the same problem."""
        note = ""
        if name == "gptq-torch":
            Q, sec = self.fns[name](W, H, bits=bits, group_size=group_size, act_order=bool(variant.act_order))
        elif name == "gptqmodel":
            Q, sec = self.installed.run(
                "gptqmodel", W, H, bits=bits, group_size=group_size, act_order=bool(variant.act_order)
            )
        elif name == "quantease-torch":
            iters = int(extra.get("iters", 30))
            max_sweeps = extra.get("peer_max_sweeps")
            Q, sec, _ = self.fns[name](
                W,
                H,
                bits=bits,
                group_size=group_size,
                act_order=True,
                iters=iters,
                max_sweeps=max_sweeps,
                track_loss=False,
            )
            if max_sweeps is not None and max_sweeps < iters:
                sec = sec * iters / max_sweeps
                note = f"timed over {max_sweeps} of {iters} sweeps, extrapolated; loss not comparable"
                return float("nan"), sec, note
        elif name == "leanquant-torch":
            km = extra.get("peer_kmeans", self.leanquant_kmeans)
            Q, sec = self.fns[name](W, H, bits=bits, kmeans=km, processes=1)
            note = f"k-means: {km}"
        elif name == "hqq":
            Q, sec = self.installed.run("hqq", W, None, bits=bits, group_size=group_size if group_size > 0 else None)
        else:
            raise ValueError(name)
        return float(quantease.layer_loss(W, Q, H)), float(sec), note


def peer_names(variant: Variant, peers: Peers, use_gptqmodel: bool) -> List[str]:
    if variant.peer == "gptq":
        return (["gptqmodel"] if use_gptqmodel else []) + ["gptq-torch"]
    return {"quantease": ["quantease-torch"], "leanquant": ["leanquant-torch"], "hqq": ["hqq"]}.get(variant.peer, [])


PEER_LABEL = {
    "gptq-torch": "torch GPTQ port",
    "gptqmodel": "gptqmodel GPTQ",
    "quantease-torch": "torch QuantEase port",
    "leanquant-torch": "torch LeanQuant port",
    "hqq": "HQQ",
}


def solver_flops(method: str, rows: int, cols: int, bits: int, variant: Variant, info: dict, extra: dict) -> dict:
    """{"total": ..., "hot": flops of the hot loop, "hot_phase": its phase name} or {} (no count)."""
    if method == "gptq":
        f = gptq_flops(rows, cols)
        return {"total": f["total"], "hot": f["column_loop"], "hot_phase": "column_loop"}
    if method == "quantease":
        kw = {**variant.kw(), **extra}
        sweeps = int(info.get("iters", kw.get("iters", 30)))
        f = quantease_flops(rows, cols, sweeps, outliers=float(kw.get("outliers", 0.0)) > 0)
        total = f["total"] + (gptq_flops(rows, cols)["total"] if kw.get("init") == "gptq" else 0.0)
        return {"total": total, "hot": sweeps * f["per_sweep"], "hot_phase": "sweeps"}
    if method == "leanquant":
        kw = variant.kw()
        if kw.get("grid", "nonuniform") == "nonuniform":
            f = leanquant_flops(rows, cols, bits, int(np.ceil(np.mean(info.get("kmeans_iters", 20)))))
        else:
            f = gptq_flops(rows, cols)
        return {"total": f["total"], "hot": f["column_loop"], "hot_phase": "column_loop"}
    return {}


def hot_seconds(info: dict, phase: str) -> Optional[float]:
    ph = info.get("phase_seconds")
    if isinstance(ph, dict) and phase in ph:
        return float(ph[phase])
    if isinstance(ph, (list, tuple)):
        for item in ph:
            if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == phase:
                return float(item[1])
    if phase == "sweeps" and "sweep_seconds" in info:
        return float(np.sum(info["sweep_seconds"]))
    return None
