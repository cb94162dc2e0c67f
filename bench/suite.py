"""The benchmark suite: every solver and its peers on identical layer problems, in one run.

    PYTHONPATH=python python bench/suite.py --quick     # CI smoke: tiny synthetic layers (+2 real), seconds
    PYTHONPATH=python python bench/suite.py             # full: real SmolLM2/MiniLM layers + 4096-wide layers
    PYTHONPATH=python python bench/suite.py --sets smollm2 --bits 3 4 --methods gptq quantease

Layer sets
* ``smollm2`` / ``minilm``: linear layers of the real pretrained models with their real calibration Hessians
  (bench/real_layers.py; collected once, cached under the git-ignored .cache/bench-hessians/).
* ``synthetic``: LLM-shaped layers (bench/synthetic.py): 4096x4096, 4096x11008, 11008x4096 in full mode.

Per row: method, bits, group, relative layer loss = loss / tr(W H Wᵀ), seconds (the solve: result.seconds,
without the final layer_loss),
GFLOP/s from the solver's flop count (bench/flops.py) and its share of this machine's float32 GEMM rate
measured in the same run (bench/machine.py), and the speed-up over the matching peer on the same inputs.
Real layer sets are shown as the median relative loss over their layers, the summed seconds, the aggregate
GFLOP/s (summed flops / summed seconds) and the speed-up over the layers where the peer ran.

A solver missing from this build (``quantease.quantease`` and ``quantease.leanquant`` are merged later)
prints a "not in this build" row; a peer that is not installed prints "not installable: <reason>".
``run_suite(..., solvers={...})`` replaces solvers by callables (used by the tests to check the plumbing).
Writes bench/results/suite-<mode>.json (every figure + the machine) and suite-<mode>.png (loss vs time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/ and the checkout (for bench.peers); quantease itself comes from the environment or PYTHONPATH=python,
# never from the source tree behind the caller's back (it has no compiled core unless dev-built).
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

from flops import gptq_flops, leanquant_flops, quantease_flops  # noqa: E402
from machine import describe, gemm_gflops  # noqa: E402
from synthetic import llm_like_problem  # noqa: E402

import quantease  # noqa: E402

RESULTS = HERE / "results"


def _print(*args, **kwargs):
    print(*args, **kwargs, flush=True)  # progress shows up when the output is a file


SOLVERS = ("rtn", "gptq", "quantease", "easyquant", "leanquant")


# ----------------------------------------------------------------------------------------------------------
# what runs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One solver configuration. ``group``: "g" = the layer set's group size, -1 = per channel."""

    label: str
    method: str
    kwargs: tuple = ()  # extra solver kwargs as (name, value) pairs
    group: Any = -1
    act_order: Optional[bool] = None  # for GPTQ (and its peer)
    peer: Optional[str] = None  # "gptq" | "quantease" | "leanquant" | "hqq"
    ref: Optional[str] = None  # label of the GPTQ variant it is compared with in the summary
    bits: tuple = (2, 3, 4)

    def kw(self) -> dict:
        return dict(self.kwargs)


def _variants(G: str = "g") -> List[Variant]:
    g = "g"
    return [
        Variant("RTN", "rtn", group=-1, ref="GPTQ act"),
        Variant("RTN g", "rtn", group=g, ref="GPTQ act g"),
        Variant("GPTQ", "gptq", group=-1, act_order=False, peer="gptq", ref="GPTQ act"),
        Variant("GPTQ act", "gptq", group=-1, act_order=True, peer="gptq"),
        Variant("GPTQ g", "gptq", group=g, act_order=False, peer="gptq", ref="GPTQ act g"),
        Variant("GPTQ act g", "gptq", group=g, act_order=True, peer="gptq"),
        Variant("QuantEase", "quantease", (("init", "w"),), group=-1, peer="quantease", ref="GPTQ act"),
        Variant("QuantEase g", "quantease", (("init", "w"),), group=g, peer="quantease", ref="GPTQ act g"),
        Variant("QuantEase init GPTQ", "quantease", (("init", "gptq"),), group=-1, ref="GPTQ act", bits=(3, 4)),
        Variant("QuantEase init GPTQ g", "quantease", (("init", "gptq"),), group=g, ref="GPTQ act g", bits=(3, 4)),
        Variant("QuantEase refit", "quantease", (("refit", 5),), group=-1, ref="GPTQ act", bits=(3, 4)),
        Variant(
            "QuantEase init GPTQ refit",
            "quantease",
            (("init", "gptq"), ("refit", 5)),
            group=-1,
            ref="GPTQ act",
            bits=(3, 4),
        ),
        Variant(
            "QuantEase init GPTQ refit g",
            "quantease",
            (("init", "gptq"), ("refit", 5)),
            group=g,
            ref="GPTQ act g",
            bits=(3, 4),
        ),
        Variant("QuantEase out 0.5%", "quantease", (("outliers", 0.005),), group=-1, ref="GPTQ act", bits=(3,)),
        Variant("QuantEase out 1%", "quantease", (("outliers", 0.01),), group=-1, ref="GPTQ act", bits=(3,)),
        Variant("EasyQuant", "easyquant", group=-1, peer="hqq", ref="GPTQ act"),
        Variant("EasyQuant g", "easyquant", group=g, peer="hqq", ref="GPTQ act g"),
        Variant("LeanQuant nu", "leanquant", (("grid", "nonuniform"),), group=-1, peer="leanquant", ref="GPTQ act"),
        Variant("LeanQuant affine", "leanquant", (("grid", "affine"),), group=-1, ref="GPTQ act"),
        Variant("LeanQuant affine g", "leanquant", (("grid", "affine"),), group=g, ref="GPTQ act g"),
    ]


ALL_VARIANTS = _variants()


@dataclass
class LayerSet:
    name: str
    description: str
    group_size: int
    layers: list  # of (name, W, H)
    variants: List[Variant]
    bits: tuple
    peer_layers: Optional[set] = None  # layer names on which peers run (None = all)
    peer_bits: Optional[dict] = None  # peer -> bits it runs at (None = all)
    aggregate: bool = True  # real sets: one table row per (variant, bits) over all layers
    overrides: dict = field(default_factory=dict)  # variant label -> extra kwargs (e.g. fewer sweeps)
    gptqmodel_layers: set = field(default_factory=set)
    peer_layer_map: dict = field(default_factory=dict)  # peer -> the only layers it runs on
    variant_layers: dict = field(default_factory=dict)  # variant label -> the only layers it runs on
    layer_bits: dict = field(default_factory=dict)  # layer -> the only bit widths run on it
    notes: list = field(default_factory=list)


@dataclass
class Config:
    mode: str = "quick"
    sets: tuple = ("synthetic", "smollm2", "minilm")
    bits: Optional[tuple] = None
    methods: Optional[tuple] = None
    real: str = "auto"  # "auto": when cached/available; "yes"; "no"
    peers: bool = True
    blocks: Optional[dict] = None  # set -> blocks
    n_samples: Optional[int] = None
    seq_len: Optional[int] = None
    out_dir: Path = RESULTS
    write: bool = True
    plot: bool = True
    verbose: bool = False
    shapes: Optional[tuple] = None  # synthetic (rows, cols) shapes instead of the mode's
    repeats: int = 1  # best of this many calls, for solvers and peers alike (noisy machines)


def _g(variant: Variant, group_size: int) -> int:
    return group_size if variant.group == "g" else -1


def _label(variant: Variant, group_size: int) -> str:
    return variant.label[:-2] + f" g{group_size}" if variant.label.endswith(" g") else variant.label


# ----------------------------------------------------------------------------------------------------------
# solvers and peers: each returns (Q or None, loss or None, seconds, info)
# ----------------------------------------------------------------------------------------------------------


def resolve_solvers(override: Optional[Dict[str, Callable]] = None) -> Dict[str, Optional[Callable]]:
    """name -> callable, or None when this build of quantease lacks it."""
    out = {name: getattr(quantease, name, None) for name in SOLVERS}
    out.update(override or {})
    return out


def _call_solver(fn: Callable, method: str, W, H, bits: int, group_size: int, variant: Variant, extra: dict):
    kw = variant.kw()
    kw.update(extra)
    t0 = time.perf_counter()
    if method == "rtn":
        res = fn(W, bits=bits, group_size=group_size, **kw)
    elif method == "gptq":
        res = fn(W, H, bits=bits, group_size=group_size, act_order=bool(variant.act_order), **kw)
    elif method == "quantease":
        res = fn(W, H, bits=bits, group_size=group_size, **kw)
    elif method == "easyquant":
        res = fn(W, bits=bits, group_size=group_size, H=H, **kw)
    elif method == "leanquant":
        res = fn(W, H, bits=bits, group_size=group_size, **kw)
    else:
        raise ValueError(f"unknown method {method!r}")
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

    def __init__(self, enabled: bool, log=_print):
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


def _peer_names(variant: Variant, peers: Peers, use_gptqmodel: bool) -> List[str]:
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


# ----------------------------------------------------------------------------------------------------------
# flops
# ----------------------------------------------------------------------------------------------------------


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


def _hot_seconds(info: dict, phase: str) -> Optional[float]:
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


# ----------------------------------------------------------------------------------------------------------
# layer sets
# ----------------------------------------------------------------------------------------------------------

SYNTH_FULL = [(4096, 4096), (4096, 11008), (11008, 4096)]
SYNTH_QUICK = [(128, 256), (256, 512)]
REAL_FULL = {
    "smollm2": dict(blocks=(0, 15, 29), n_samples=16, seq_len=512),
    "minilm": dict(blocks=(0, 5), n_samples=256, seq_len=128, bits=(3, 4)),
}
REAL_QUICK = {"smollm2": dict(blocks=(0,), kinds=("self_attn.q_proj", "mlp.down_proj"), n_samples=4, seq_len=256)}


def _pick(variants: Sequence[Variant], labels: Sequence[str]) -> List[Variant]:
    by = {v.label: v for v in variants}
    return [by[label] for label in labels]


def synthetic_set(cfg: Config) -> LayerSet:
    quick = cfg.mode == "quick"
    shapes = cfg.shapes or (SYNTH_QUICK if quick else SYNTH_FULL)
    layers = []
    for rows, cols in shapes:
        W, H = llm_like_problem(rows, cols, seed=rows + cols)
        layers.append((f"{rows}x{cols}", W, H))
    if quick:
        variants = [
            dataclass_replace(v, bits=(3, 4))
            for v in _pick(
                ALL_VARIANTS,
                (
                    "RTN g",
                    "GPTQ",
                    "GPTQ act g",
                    "QuantEase",
                    "QuantEase init GPTQ",
                    "EasyQuant g",
                    "LeanQuant nu",
                    "LeanQuant affine g",
                ),
            )
        ]
        s = LayerSet(
            "synthetic",
            "LLM-like synthetic layers (bench/synthetic.py), tiny (--quick)",
            128,
            layers,
            variants,
            (3, 4),
            aggregate=False,
            peer_bits={"quantease-torch": (4,), "leanquant-torch": (4,)},
            peer_layer_map={"quantease-torch": {"128x256"}, "leanquant-torch": {"128x256"}},
        )
        s.overrides = {"LeanQuant nu": dict(peer_kmeans="lloyd")}
        s.notes.append(
            "--quick: the LeanQuant port runs its batched torch Lloyd, not the official per-row sklearn "
            "KMeans (seconds of process overhead on a tiny layer)"
        )
        return s
    # full: 4-bit everything cheap; QuantEase 30 sweeps only on 4096^2, 3 sweeps (timing) on the larger ones
    labels = (
        "RTN g",
        "GPTQ",
        "GPTQ act",
        "GPTQ g",
        "GPTQ act g",
        "QuantEase",
        "EasyQuant g",
        "LeanQuant nu",
        "LeanQuant affine g",
    )
    variants = [dataclass_replace(v, bits=(4,) if v.method != "gptq" else (3, 4)) for v in _pick(ALL_VARIANTS, labels)]
    s = LayerSet(
        "synthetic",
        "LLM-like synthetic layers (bench/synthetic.py): " + ", ".join(n for n, _, _ in layers),
        128,
        layers,
        variants,
        (3, 4),
        aggregate=False,
        peer_layers={"4096x4096"},
        gptqmodel_layers={"4096x4096"},
        peer_bits={
            "quantease-torch": (4,),
            "leanquant-torch": (4,),
            "gptq-torch": (4,),
            "gptqmodel": (4,),
            "hqq": (4,),
        },
    )
    s.overrides = {
        ("QuantEase", "4096x4096"): dict(peer_max_sweeps=2),
        ("QuantEase", "4096x11008"): dict(iters=3),
        ("QuantEase", "11008x4096"): dict(iters=3),
    }
    s.variant_layers = {"GPTQ act": {"4096x4096"}, "GPTQ g": {"4096x4096"}}
    s.layer_bits = {"4096x11008": (4,), "11008x4096": (4,)}
    s.notes.append(
        "QuantEase on 4096x11008 and 11008x4096 runs 3 sweeps (timing only; flops counted for 3); "
        "the torch QuantEase port on 4096x4096 is timed over 2 sweeps and extrapolated to 30"
    )
    s.notes.append(
        "GPTQ act-order per channel and GPTQ g128 without act-order run on 4096x4096 only, 3 bits "
        "on 4096x4096 only; peers on 4096x4096 only, at 4 bits"
    )
    return s


def dataclass_replace(v: Variant, **kw) -> Variant:
    import dataclasses

    return dataclasses.replace(v, **kw)


def real_set(name: str, cfg: Config, log=_print) -> Optional[LayerSet]:
    import real_layers

    spec = dict((REAL_QUICK if cfg.mode == "quick" else REAL_FULL).get(name) or {})
    if not spec:
        return None
    if cfg.blocks and name in cfg.blocks:
        spec["blocks"] = tuple(cfg.blocks[name])
    if cfg.n_samples:
        spec["n_samples"] = cfg.n_samples
    if cfg.seq_len:
        spec["seq_len"] = cfg.seq_len
    kinds = spec.pop("kinds", None)
    set_bits = spec.pop("bits", (2, 3, 4))
    if cfg.real == "no":
        return None
    if cfg.real == "auto" and not (real_layers.cached(name, kinds=kinds, **spec) or real_layers.real_available(name)):
        log(f"  {name}: skipped (model or corpus not in the cache; --real yes fetches them)")
        return None
    layers = real_layers.load_layer_set(name, kinds=kinds, log=log, **spec)
    G = real_layers.LAYER_SETS[name]["group_size"]
    desc = (
        f"{real_layers.LAYER_SETS[name]['description']}; blocks {list(spec['blocks'])}, {len(layers)} layers, "
        f"{layers[0].n_tokens} calibration tokens"
    )
    if cfg.mode == "quick":
        variants = [
            dataclass_replace(v, bits=(3, 4))
            for v in _pick(
                ALL_VARIANTS,
                ("RTN g", "GPTQ act", "GPTQ act g", "QuantEase", "QuantEase g", "EasyQuant g", "LeanQuant nu"),
            )
        ]
        bits = (3, 4)
        peer_layers = None
    else:
        variants = list(ALL_VARIANTS)
        bits = tuple(set_bits)
        first = min(L.block for L in layers)
        first_layers = {L.name for L in layers if L.block == first}
        peer_layers = None  # every peer on every layer, except the slow ports (peer_layer_map below)
    s = LayerSet(
        name,
        desc,
        G,
        [(L.name, L.W, L.H) for L in layers],
        variants,
        bits,
        peer_layers=peer_layers,
        peer_bits=None if cfg.mode == "quick" else {p: (4,) for p in PEER_LABEL},
        aggregate=True,
    )
    if cfg.mode != "quick":
        s.peer_layer_map = {"quantease-torch": first_layers, "leanquant-torch": first_layers}
        s.notes.append(
            f"peers run at 4 bits; the torch QuantEase and LeanQuant ports on block {first} only (all its "
            "kinds): their speed-ups are over those layers, and their rows name our loss on the same layers"
        )
    return s


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------


def _finite(x) -> Optional[float]:
    return float(x) if x is not None and isinstance(x, (int, float)) and math.isfinite(x) else None


def run_set(
    s: LayerSet, cfg: Config, solvers: Dict[str, Optional[Callable]], peers: Peers, gemm: float, log=_print
) -> dict:
    records: List[dict] = []
    status_rows: List[dict] = []
    variants = [v for v in s.variants if cfg.methods is None or v.method in cfg.methods]
    bits_all = tuple(b for b in s.bits if cfg.bits is None or b in cfg.bits)
    missing = {v.method for v in variants if solvers.get(v.method) is None}
    for v in variants:
        if v.method in missing:
            status_rows.append(
                dict(
                    set=s.name,
                    method=_label(v, s.group_size),
                    solver=v.method,
                    status="not in this build",
                    detail=f"quantease.{v.method} is not in this build of quantease",
                )
            )
    peer_seen = set()
    for v in variants:
        for pn in _peer_names(v, peers, bool(s.gptqmodel_layers)):
            if pn not in peer_seen:
                peer_seen.add(pn)
                if not peers.enabled:
                    continue
                if not peers.ok(pn):
                    status_rows.append(
                        dict(
                            set=s.name,
                            method=f"[peer] {PEER_LABEL[pn]}",
                            solver=pn,
                            status=peers.status.get(pn, "not installable: unknown"),
                        )
                    )
    t_set = time.perf_counter()
    for li, (lname, W, H) in enumerate(s.layers):
        rows, cols = W.shape
        log(f"  {s.name}: layer {li + 1}/{len(s.layers)} {lname} ({rows}x{cols}), {time.perf_counter() - t_set:.0f} s")
        base = float(np.einsum("ij,ij->", W.astype(np.float64) @ H.astype(np.float64), W.astype(np.float64)))
        for v in variants:
            if v.method in missing or (v.label in s.variant_layers and lname not in s.variant_layers[v.label]):
                continue
            G = _g(v, s.group_size)
            if G > 0 and cols % G:
                continue
            extra = {**s.overrides.get(v.label, {}), **s.overrides.get((v.label, lname), {})}
            solver_extra = {k: val for k, val in extra.items() if not k.startswith("peer_")}
            for bits in bits_all:
                if bits not in v.bits or (lname in s.layer_bits and bits not in s.layer_bits[lname]):
                    continue
                rec = dict(
                    set=s.name,
                    layer=lname,
                    rows=rows,
                    cols=cols,
                    method=_label(v, s.group_size),
                    solver=v.method,
                    bits=bits,
                    group_size=G,
                    act_order=v.act_order,
                    kwargs={**v.kw(), **solver_extra},
                    status="ok",
                )
                try:
                    loss, sec, info = _call_solver(solvers[v.method], v.method, W, H, bits, G, v, solver_extra)
                    for _ in range(cfg.repeats - 1):
                        again = _call_solver(solvers[v.method], v.method, W, H, bits, G, v, solver_extra)
                        if again[1] < sec:
                            loss, sec, info = again
                except Exception as exc:  # noqa: BLE001 - a failing solver is a row, not a crash
                    rec.update(status=f"error: {type(exc).__name__}: {exc}")
                    if cfg.verbose:
                        traceback.print_exc()
                    records.append(rec)
                    continue
                fl = solver_flops(v.method, rows, cols, bits, v, info, solver_extra)
                rec.update(loss=loss, rel_loss=loss / base, seconds=sec, wall_seconds=info.get("wall_seconds"))
                if "iters" in info:
                    rec["sweeps"] = info["iters"]
                if fl:
                    rec.update(
                        flops=fl["total"], gflops=fl["total"] / sec / 1e9, gemm_share=fl["total"] / sec / 1e9 / gemm
                    )
                    hs = _hot_seconds(info, fl["hot_phase"])
                    if hs and hs > 0:
                        rec.update(
                            hot_phase=fl["hot_phase"],
                            hot_gflops=fl["hot"] / hs / 1e9,
                            hot_gemm_share=fl["hot"] / hs / 1e9 / gemm,
                        )
                # peers on the same inputs
                on_layer = s.peer_layers is None or lname in s.peer_layers
                records.append(rec)
                for pn in _peer_names(v, peers, lname in s.gptqmodel_layers):
                    pb = (s.peer_bits or {}).get(pn)
                    if pn in s.peer_layer_map and lname not in s.peer_layer_map[pn]:
                        continue
                    if not on_layer or (pb is not None and bits not in pb) or not peers.ok(pn):
                        continue
                    prec = dict(
                        set=s.name,
                        layer=lname,
                        rows=rows,
                        cols=cols,
                        method=f"[peer] {PEER_LABEL[pn]} ({rec['method']})",
                        solver=pn,
                        peer_of=rec["method"],
                        bits=bits,
                        group_size=G if pn != "leanquant-torch" else -1,
                        act_order=v.act_order,
                        status="ok",
                    )
                    try:
                        ploss, psec, note = peers.run(pn, W, H, bits, G, v, extra)
                        for _ in range(cfg.repeats - 1):
                            again = peers.run(pn, W, H, bits, G, v, extra)
                            if again[1] < psec:
                                ploss, psec, note = again
                    except Exception as exc:  # noqa: BLE001
                        prec.update(status=f"error: {type(exc).__name__}: {exc}")
                        records.append(prec)
                        continue
                    prec.update(loss=_finite(ploss), rel_loss=_finite(ploss / base), seconds=psec, note=note)
                    pfl = solver_flops(v.method, rows, cols, bits, v, {}, solver_extra) if pn != "hqq" else {}
                    if pfl and "extrapolated" not in note:
                        prec.update(
                            flops=pfl["total"],
                            gflops=pfl["total"] / psec / 1e9,
                            gemm_share=pfl["total"] / psec / 1e9 / gemm,
                        )
                    records.append(prec)
                    if "speedup" not in rec:  # the first peer listed is the matching one
                        rec.update(peer=pn, peer_seconds=psec, peer_rel_loss=prec["rel_loss"], speedup=psec / sec)
                        if prec["rel_loss"] is not None:
                            rec["equal_loss"] = bool(
                                abs(rec["rel_loss"] - prec["rel_loss"]) <= 0.02 * max(prec["rel_loss"], 1e-30)
                            )
                if cfg.verbose:
                    log(f"    {lname} {rec['method']} {bits}b: rel {rec['rel_loss']:.4e} {sec:.3f}s")
    return dict(
        name=s.name,
        description=s.description,
        group_size=s.group_size,
        aggregate=s.aggregate,
        layers=[dict(name=n, rows=W.shape[0], cols=W.shape[1]) for n, W, _ in s.layers],
        notes=s.notes,
        status_rows=status_rows,
        records=records,
    )


# ----------------------------------------------------------------------------------------------------------
# tables, summary, targets
# ----------------------------------------------------------------------------------------------------------


def table_rows(res: dict) -> List[dict]:
    """The rows printed for a set: per layer (synthetic) or aggregated over the layers (real)."""
    out = []
    recs = [r for r in res["records"] if r["status"] == "ok"]
    keys = []
    for r in recs:
        k = (("all" if res["aggregate"] else r["layer"]), r["method"], r["bits"])
        if k not in keys:
            keys.append(k)
    for layer, method, bits in keys:
        rs = [
            r for r in recs if r["method"] == method and r["bits"] == bits and (layer == "all" or r["layer"] == layer)
        ]
        losses = [r["rel_loss"] for r in rs if r.get("rel_loss") is not None]
        sec = float(sum(r["seconds"] for r in rs))
        row = dict(
            layer=layer if layer != "all" else f"{len(rs)} layers",
            method=method,
            bits=bits,
            group=rs[0]["group_size"],
            n=len(rs),
            rel_loss=float(np.median(losses)) if losses else None,
            seconds=sec,
            note=rs[0].get("note", ""),
        )
        fl = [r for r in rs if "flops" in r]
        if fl and len(fl) == len(rs) and sec > 0:
            row["gflops"] = sum(r["flops"] for r in fl) / sec / 1e9
            row["gemm_share"] = row["gflops"] / res["gemm"] if res.get("gemm") else None
        sp = [r for r in rs if "speedup" in r]
        if sp:
            row["speedup"] = sum(r["peer_seconds"] for r in sp) / sum(r["seconds"] for r in sp)
            row["peer"] = PEER_LABEL.get(sp[0]["peer"], sp[0]["peer"])
        if layer == "all" and method.startswith("[peer]"):
            # a peer may run on fewer layers than the solver: put ours over the same layers next to it
            ours = {(r["layer"], r["bits"]): r for r in recs if r["method"] == rs[0]["peer_of"]}
            mine = [ours[(r["layer"], r["bits"])]["rel_loss"] for r in rs if (r["layer"], r["bits"]) in ours]
            if mine and len(rs) < sum(1 for r in recs if r["method"] == rs[0]["peer_of"] and r["bits"] == bits):
                row["ours_same_layers"] = float(np.median(mine))
                row["note"] = (
                    (row["note"] + "; ") if row["note"] else ""
                ) + f"{rs[0]['peer_of']} on the same {len(mine)} layers: {row['ours_same_layers']:.3e}"
        if any("sweeps" in r for r in rs):
            row["sweeps"] = int(np.median([r["sweeps"] for r in rs if "sweeps" in r]))
        out.append(row)
    return out


def _fmt(x, spec: str, width: int) -> str:
    return f"{x:{spec}}".rjust(width) if x is not None else "-".rjust(width)


def print_set(res: dict, log=_print) -> None:
    log(f"\n## {res['name']}: {res['description']}")
    for n in res["notes"]:
        log(f"   note: {n}")
    head = (
        f"{'layer':>12} {'method':<44} {'bits':>4} {'group':>5} {'rel.loss':>10} {'seconds':>9} "
        f"{'GFLOP/s':>8} {'%GEMM':>6} {'speed-up':>9}  peer"
    )
    log(head)
    log("-" * len(head))
    for r in res["table"]:
        share = None if r.get("gemm_share") is None else 100 * r["gemm_share"]
        sp = None if r.get("speedup") is None else r["speedup"]
        share_s = "-" if share is None else f"{share:.0f}%"
        sp_s = "-" if sp is None else f"{sp:.1f}x"
        log(
            f"{r['layer']:>12} {r['method']:<44} {r['bits']:>4} {r['group']:>5} {_fmt(r['rel_loss'], '.3e', 10)} "
            f"{r['seconds']:9.3f} {_fmt(r.get('gflops'), '.1f', 8)} {share_s:>6} "
            f"{sp_s:>9}  {r.get('peer', '')}{('  (' + r['note'] + ')') if r.get('note') else ''}"
        )
    for st in res["status_rows"]:
        log(f"{'-':>12} {st['method']:<44} {st['status']}")


def summary(results: List[dict]) -> dict:
    """Median loss ratio vs the matching GPTQ (per method and bits, over every layer of every set), and the
    share of real layers where QuantEase beats GPTQ at 3 and 4 bits."""
    ratios: Dict[tuple, List[float]] = {}
    beats: Dict[tuple, List[bool]] = {}
    beats_default: Dict[tuple, List[bool]] = {}
    for res in results:
        recs = [r for r in res["records"] if r["status"] == "ok" and not r["method"].startswith("[peer]")]
        idx = {(r["layer"], r["method"], r["bits"]): r for r in recs}
        G = res["group_size"]
        for v in ALL_VARIANTS:
            if v.ref is None:
                continue
            m, ref = _label(v, G), _label(next(x for x in ALL_VARIANTS if x.label == v.ref), G)
            for (layer, method, bits), r in idx.items():
                if method != m or (layer, ref, bits) not in idx:
                    continue
                g = idx[(layer, ref, bits)]
                if g["loss"] > 0:
                    ratios.setdefault((m.replace(f" g{G}", " g"), bits), []).append(r["loss"] / g["loss"])
                if v.method == "quantease" and res["name"] != "synthetic" and bits in (3, 4):
                    beats.setdefault((v.label, bits), []).append(r["loss"] < g["loss"])
                # Each solver at its defaults: QuantEase (act-order, from W) against GPTQ (no act-order).
                plain = ref.replace("GPTQ act", "GPTQ")
                if (
                    v.label in ("QuantEase", "QuantEase g")
                    and res["name"] != "synthetic"
                    and bits in (3, 4)
                    and (layer, plain, bits) in idx
                ):
                    beats_default.setdefault((v.label, bits), []).append(r["loss"] < idx[(layer, plain, bits)]["loss"])
    out = dict(
        loss_ratio_vs_gptq=[
            dict(method=m, bits=b, median=float(np.median(v)), n=len(v))
            for (m, b), v in sorted(ratios.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        ],
        quantease_beats_gptq=[
            dict(method=m, bits=b, share=float(np.mean(v)), n=len(v)) for (m, b), v in sorted(beats.items())
        ],
        quantease_beats_gptq_default=[
            dict(method=m, bits=b, share=float(np.mean(v)), n=len(v)) for (m, b), v in sorted(beats_default.items())
        ],
    )
    return out


def targets(results: List[dict], gemm: float) -> List[dict]:
    """The issue's targets: measured figure and PASS/MISS (n/a when the run has no data for it)."""
    out = []
    syn = next((r for r in results if r["name"] == "synthetic"), None)
    recs = [r for r in (syn["records"] if syn else []) if r["status"] == "ok"]
    big = max((r for r in recs), key=lambda r: r["rows"] * r["cols"], default=None)
    where = None if big is None else big["layer"]
    scale_note = "" if where in (None, "4096x4096") else f" (measured on {where}, not 4096x4096)"
    target_layer = "4096x4096" if any(r["layer"] == "4096x4096" for r in recs) else where

    def add(name, figure, ok, detail):
        out.append(
            dict(
                target=name,
                figure=figure,
                status="n/a" if figure is None else ("PASS" if ok else "MISS"),
                detail=detail,
            )
        )

    g = [r for r in recs if r["solver"] == "gptq" and r["layer"] == target_layer and "speedup" in r]
    if g:
        fig = min(r["speedup"] for r in g)
        eq = all(r.get("equal_loss", False) for r in g)
        add(
            "GPTQ >= 3x faster than the torch peer GPTQ at equal loss",
            fig,
            fig >= 3 and eq,
            f"min speed-up over {len(g)} configs vs {PEER_LABEL[g[0]['peer']]}, equal loss (2%) in all: {eq}"
            + scale_note,
        )
    else:
        add("GPTQ >= 3x faster than the torch peer GPTQ at equal loss", None, False, "no GPTQ peer rows")
    qe = [r for r in recs if r["method"] == "QuantEase" and r["layer"] == target_layer]
    gp = {(r["bits"], r["group_size"]): r for r in recs if r["method"] == "GPTQ act" and r["layer"] == target_layer}
    pairs = [(q, gp[(q["bits"], q["group_size"])]) for q in qe if (q["bits"], q["group_size"]) in gp]
    if pairs:
        q, gr = pairs[0]
        sec30 = q["seconds"] * 30 / q.get("sweeps", 30)
        fig = sec30 / gr["seconds"]
        add(
            "QuantEase 30 sweeps <= 4x our GPTQ's time",
            fig,
            fig <= 4,
            f"{sec30:.2f} s vs GPTQ act {gr['seconds']:.2f} s, {q['bits']} bits" + scale_note,
        )
    else:
        add("QuantEase 30 sweeps <= 4x our GPTQ's time", None, False, "QuantEase not run (not in this build?)")
    qp = [r for r in qe if "speedup" in r]
    if qp:
        fig = min(r["speedup"] for r in qp)
        add(
            "QuantEase >= 10x faster than the torch port", fig, fig >= 10, "30-sweep seconds vs the port's" + scale_note
        )
    else:
        add("QuantEase >= 10x faster than the torch port", None, False, "no QuantEase/port pair")
    hot = [
        (r["method"], r["hot_gemm_share"])
        for r in recs
        if r["layer"] == target_layer and "hot_gemm_share" in r and r["solver"] in ("gptq", "quantease")
    ]
    if hot:
        fig = min(s for _, s in hot)
        add(
            "hot loops >= 50% of the GEMM rate",
            fig,
            fig >= 0.5,
            "min over " + ", ".join(f"{m} {100 * s:.0f}%" for m, s in hot) + f" (GEMM {gemm:.1f} GFLOP/s)" + scale_note,
        )
    else:
        add("hot loops >= 50% of the GEMM rate", None, False, "no hot-loop timings")
    sm = summary([r for r in results if r["name"] != "synthetic"])

    def share_target(name, rows, threshold, detail, missing):
        # the share over every (layer, bits, group) pair of the rows, weighted by their counts
        if rows:
            n = sum(x["n"] for x in rows)
            fig = sum(x["share"] * x["n"] for x in rows) / n
            add(name, fig, fig >= threshold, f"{n} (layer, bits, group) pairs, {detail}")
        else:
            add(name, None, False, missing)

    beats = sm["quantease_beats_gptq"]
    share_target(
        "QuantEase loss below GPTQ on >= 90% of real layers at 3 and 4 bits",
        [x for x in beats if x["method"] in ("QuantEase", "QuantEase g")],
        0.9,
        "vs GPTQ act-order, same group",
        "no real layers with QuantEase and GPTQ",
    )
    share_target(
        "QuantEase (defaults) loss below GPTQ (defaults, no act-order) on > 50% of real layers",
        sm["quantease_beats_gptq_default"],
        0.5 + 1e-12,
        "3 and 4 bits",
        "no real layers with QuantEase and GPTQ without act-order",
    )
    share_target(
        "QuantEase init='gptq' loss below GPTQ act-order on >= 90% of real layers",
        [x for x in beats if x["method"] in ("QuantEase init GPTQ", "QuantEase init GPTQ g")],
        0.9,
        "3 and 4 bits",
        "no real layers with QuantEase init='gptq' and GPTQ",
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------------------------------


def plot(results: List[dict], path: Path) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001
        return f"no plot: {type(exc).__name__}: {exc}"
    panels = [(res, b) for res in results for b in sorted({r["bits"] for r in res["table"]})]
    if not panels:
        return "no plot: no rows"
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.2 * nrow), squeeze=False)
    for ax, (res, b) in zip(axes.flat, panels):
        # a peer row over fewer layers than its solver's is not comparable in a median: left out of the picture
        rows = [
            r
            for r in res["table"]
            if r["bits"] == b and r["rel_loss"] is not None and r["seconds"] > 0 and "ours_same_layers" not in r
        ]
        methods = sorted({r["method"] for r in rows})
        cmap = plt.get_cmap("tab20")
        for i, m in enumerate(methods):
            pts = [r for r in rows if r["method"] == m]
            xs = [r["seconds"] / max(1, r["n"]) for r in pts]
            ys = [r["rel_loss"] for r in pts]
            peer = m.startswith("[peer]")
            ax.scatter(xs, ys, s=36, label=m, color=cmap(i % 20), marker="o" if not peer else "x")
        # Pareto front (lowest loss for at most that time)
        pts = sorted((r["seconds"] / max(1, r["n"]), r["rel_loss"]) for r in rows)
        front, best = [], float("inf")
        for x, y in pts:
            if y < best:
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.plot(*zip(*front), color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("seconds per layer")
        ax.set_ylabel("relative layer loss")
        ax.set_title(f"{res['name']}, {b} bits", fontsize=10)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ----------------------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------------------


def run_suite(cfg: Optional[Config] = None, solvers: Optional[Dict[str, Callable]] = None, log=_print) -> dict:
    """Run the suite; returns the report (what is written as JSON). ``solvers`` replaces solvers by name."""
    cfg = cfg or Config()
    t_start = time.perf_counter()
    solv = resolve_solvers(solvers)
    machine = describe()
    gemm, gemm_threads = _gemm_rate(1024 if cfg.mode == "quick" else 2048)
    machine["gemm_blas_threads"] = gemm_threads
    machine["repeats"] = cfg.repeats
    log(f"# quantease benchmark suite ({cfg.mode}), quantease {quantease.__version__}")
    log(f"machine: {machine}")
    log(
        f"float32 GEMM rate (NumPy BLAS, {gemm_threads} threads, "
        f"{'1024' if cfg.mode == 'quick' else '2048'}^3, same run): "
        f"{gemm:.1f} GFLOP/s"
    )
    for name in SOLVERS:
        log(f"solver {name:10s} {_origin(name, solv[name], solvers)}")
    peers = Peers(cfg.peers, log=log)
    if not cfg.peers:
        log("peers: skipped (--no-peers)")
    results = []
    for name in cfg.sets:
        t0 = time.perf_counter()
        try:
            s = synthetic_set(cfg) if name == "synthetic" else real_set(name, cfg, log=log)
        except Exception as exc:  # noqa: BLE001 - a set that cannot be built is reported, not dropped
            log(f"  {name}: not available: {type(exc).__name__}: {exc}")
            results.append(
                dict(
                    name=name,
                    description="not available",
                    group_size=0,
                    aggregate=True,
                    layers=[],
                    notes=[f"{type(exc).__name__}: {exc}"],
                    status_rows=[],
                    records=[],
                    table=[],
                    seconds=0.0,
                )
            )
            continue
        if s is None:
            continue
        res = run_set(s, cfg, solv, peers, gemm, log=log)
        res["gemm"] = gemm
        res["table"] = table_rows(res)
        res["seconds"] = time.perf_counter() - t0
        print_set(res, log=log)
        results.append(res)
    log("\n## peers (same inputs, same run)")
    for k, v in peers.status.items():
        log(f"   {PEER_LABEL.get(k, k):22s} {v}")
    sm = summary(results)
    tg = targets(results, gemm)
    log("\n## summary: median loss / GPTQ act-order loss (same group), over all layers")
    for x in sm["loss_ratio_vs_gptq"]:
        log(f"   {x['method']:<28} {x['bits']} bits: {x['median']:.3f}  (n={x['n']})")
    log("## summary: share of real layers where QuantEase's loss < GPTQ's (act-order, same group)")
    if not sm["quantease_beats_gptq"]:
        log("   - (no real layers with QuantEase rows)")
    for x in sm["quantease_beats_gptq"]:
        log(f"   {x['method']:<28} {x['bits']} bits: {100 * x['share']:.0f}%  (n={x['n']})")
    if sm["quantease_beats_gptq_default"]:
        log("## summary: share of real layers where QuantEase's loss < GPTQ's without act-order (both at defaults)")
    for x in sm["quantease_beats_gptq_default"]:
        log(f"   {x['method']:<28} {x['bits']} bits: {100 * x['share']:.0f}%  (n={x['n']})")
    log("\n## targets")
    for t in tg:
        fig = (
            "-"
            if t["figure"] is None
            else (f"{100 * t['figure']:.0f}%" if "%" in t["target"] else f"{t['figure']:.2f}")
        )
        log(f"   [{t['status']:>4}] {t['target']}: {fig}  ({t['detail']})")
    machine["load_1min_end"] = round(os.getloadavg()[0], 2)
    report = dict(
        mode=cfg.mode,
        quantease=quantease.__version__,
        machine=machine,
        gemm_gflops=gemm,
        solvers={k: _origin(k, v, solvers) for k, v in solv.items()},
        peers=peers.status,
        sets=results,
        summary=sm,
        targets=tg,
        seconds=time.perf_counter() - t_start,
    )
    if cfg.write:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        jpath = cfg.out_dir / f"suite-{cfg.mode}.json"
        jpath.write_text(json.dumps(report, indent=1, default=_json_default))
        report["json"] = str(jpath)
        log(f"\nwrote {jpath}")
        if cfg.plot:
            p = plot(results, cfg.out_dir / f"suite-{cfg.mode}.png")
            report["plot"] = p
            log(f"plot: {p}")
    log(f"total {report['seconds']:.1f} s")
    return report


def _gemm_rate(n: int):
    """The GEMM rate with as many BLAS threads as the core's OpenMP uses (OMP_NUM_THREADS, else all cores):
    the tests (and some shells) limit OpenBLAS to one thread, which would understate the machine."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            return gemm_gflops(n), threads
    except ImportError:
        return gemm_gflops(n), os.environ.get("OPENBLAS_NUM_THREADS", "default")


def _origin(name: str, fn, injected) -> str:
    if fn is None:
        return "not in this build"
    return "injected" if injected and name in injected else "built"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny synthetic layers (+2 real ones when cached)")
    ap.add_argument(
        "--sets", nargs="+", default=["synthetic", "smollm2", "minilm"], choices=["synthetic", "smollm2", "minilm"]
    )
    ap.add_argument("--bits", nargs="+", type=int, default=None, help="only these bit widths")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(SOLVERS), help="only these solvers")
    ap.add_argument(
        "--real",
        choices=["auto", "yes", "no"],
        default="auto",
        help="real layer sets: auto = when the model and text are cached; yes = fetch if needed",
    )
    ap.add_argument(
        "--blocks",
        nargs="+",
        default=None,
        metavar="SET:B,B",
        help="blocks of a real set, e.g. smollm2:0,10,20,29 minilm:0,3,5",
    )
    ap.add_argument("--n-samples", type=int, default=None, help="calibration samples (windows or sentences)")
    ap.add_argument("--seq-len", type=int, default=None, help="calibration window length in tokens")
    ap.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="ROWSxCOLS",
        help="synthetic layer shapes instead of the mode's, e.g. 4096x4096",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="best of N calls for every solver and peer (use 3+ on a shared machine)"
    )
    ap.add_argument("--no-peers", action="store_true", help="skip the peers")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the JSON and the PNG (default bench/results)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every solve as it finishes")
    args = ap.parse_args(argv)
    blocks = None
    if args.blocks:
        blocks = {}
        for item in args.blocks:
            name, _, bs = item.partition(":")
            blocks[name] = tuple(int(b) for b in bs.split(",") if b)
    cfg = Config(
        mode="quick" if args.quick else "full",
        sets=tuple(args.sets),
        bits=tuple(args.bits) if args.bits else None,
        methods=tuple(args.methods) if args.methods else None,
        real=args.real,
        peers=not args.no_peers,
        blocks=blocks,
        n_samples=args.n_samples,
        seq_len=args.seq_len,
        out_dir=Path(args.out),
        plot=not args.no_plot,
        verbose=args.verbose,
        repeats=max(1, args.repeats),
        shapes=tuple(tuple(int(x) for x in sh.lower().split("x")) for sh in args.shapes) if args.shapes else None,
    )
    return run_suite(cfg)


if __name__ == "__main__":
    main()
