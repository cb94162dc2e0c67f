"""The benchmark suite's layer sets: LLM-shaped synthetic layers and real SmolLM2/MiniLM layers with their Hessians."""

from __future__ import annotations

from typing import List, Optional, Sequence

from suite_config import ALL_VARIANTS, Config, LayerSet, Variant, log_line
from suite_solvers import PEER_LABEL
from synthetic import llm_like_problem

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


def real_set(name: str, cfg: Config, log=log_line) -> Optional[LayerSet]:
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
