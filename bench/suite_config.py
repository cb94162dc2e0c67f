"""The benchmark suite's vocabulary: solver variants, layer sets, the run's configuration (bench/suite.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

#: Where the suite writes its JSON and plots (git-ignored).
RESULTS = Path(__file__).resolve().parent / "results"


def log_line(*args, **kwargs):
    print(*args, **kwargs, flush=True)  # progress shows up when the output is a file


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


def group_of(variant: Variant, group_size: int) -> int:
    return group_size if variant.group == "g" else -1


def label_of(variant: Variant, group_size: int) -> str:
    return variant.label[:-2] + f" g{group_size}" if variant.label.endswith(" g") else variant.label
