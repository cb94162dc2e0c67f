"""Quality of a (quantized) model on real text: perplexity for causal LMs, embedding similarity for encoders.

* :func:`perplexity` follows the GPTQ paper's protocol: the evaluation text is tokenized as a whole, cut
  into non-overlapping windows of the model's context length (``n_tokens // seq_len`` windows, the tail
  dropped), each window is scored independently (no carried-over context), and
  ``ppl = exp(sum of token NLLs / number of predicted tokens)``, where each window predicts its tokens
  2..seq_len. (GPTQ's script divides by ``n_windows * seq_len`` instead, a relative difference of
  ``1/seq_len`` in the exponent.) ``seq_len`` may be set below the context length, and ``max_windows``
  keeps the first windows only, to bound CPU time; report both with the figure.
* :func:`embedding_similarity` compares a quantized encoder with its full-precision original on the same
  sentences: the mean cosine similarity of their sentence embeddings (mean of the last hidden states over
  the attention mask, as sentence-transformers pools all-MiniLM-L6-v2) and the mean cosine similarity of
  their last hidden states, token by token over non-padding tokens.

torch is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from ._validate import check_positive_int
from .text import eval_windows, sentence_batches

__all__ = ["perplexity", "window_nll", "context_length", "sentence_embeddings", "embedding_similarity", "Similarity"]

#: Default cap on the evaluation window when the model's context is longer (GPTQ evaluates at 2048).
MAX_DEFAULT_SEQ_LEN = 2048


def context_length(model: Any) -> int | None:
    """The model's context length from its config (``max_position_embeddings``, ``n_positions``, ...)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _logits(output: Any) -> Any:
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def window_nll(model: Any, windows: Any, *, batch_size: int = 1) -> np.ndarray:
    """Summed next-token NLL (nats, float64) of each window; ``windows`` is (n, seq_len) token ids.

    Each window is scored independently: positions 1..seq_len-1 are predicted from the tokens before them
    in the same window. The model runs in eval mode under ``torch.inference_mode`` (its mode is restored).
    Returns an array of shape (n,); the number of predicted tokens is ``n * (seq_len - 1)``.
    """
    import torch
    import torch.nn.functional as F

    batch_size = check_positive_int("batch_size", batch_size)
    windows = torch.as_tensor(windows)
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"windows must be an integer tensor of shape (n, seq_len >= 2), got "
            f"{tuple(windows.shape)} of {windows.dtype}"
        )
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    use_cache = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    was_training = getattr(model, "training", False)
    model.eval()
    out = np.empty(windows.shape[0], dtype=np.float64)
    try:
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch_size):
                x = windows[start : start + batch_size].to(device=device, dtype=torch.long)
                logits = _logits(model(input_ids=x, **use_cache))[:, :-1, :]
                targets = x[:, 1:]
                # float32 log-softmax at least: half-precision logits lose digits in the NLL sum.
                nll = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).view(targets.shape)
                out[start : start + x.shape[0]] = nll.double().sum(dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def perplexity(
    model: Any,
    tokenizer_or_ids: Any,
    text: str | None = None,
    *,
    seq_len: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 1,
) -> float:
    """Perplexity of a causal LM on ``text`` by the GPTQ-paper protocol (see the module docstring).

    tokenizer_or_ids: a tokenizer (then ``text`` is the evaluation text) or a 1-D sequence of token ids
        (then ``text`` is None).
    seq_len: window length; default the model's context length capped at 2048.
    max_windows: score only the first windows (all when None).
    batch_size: windows per forward pass (memory: the logits take ``batch_size * seq_len * vocab * 4``
        bytes).
    """
    if seq_len is None:
        ctx = context_length(model)
        if ctx is None:
            raise ValueError("the model's config gives no context length; pass seq_len")
        seq_len = min(ctx, MAX_DEFAULT_SEQ_LEN)
    windows = eval_windows(tokenizer_or_ids, text, seq_len=seq_len, max_windows=max_windows)
    nll = window_nll(model, windows, batch_size=batch_size)
    return math.exp(float(nll.sum()) / (windows.shape[0] * (windows.shape[1] - 1)))


def _hidden_states(model: Any, batch: dict[str, Any]) -> Any:
    output = model(**batch)
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0] if isinstance(output, (tuple, list)) else output
    return hidden


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def sentence_embeddings(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
) -> np.ndarray:
    """Sentence embeddings (n, hidden), float32: the mean of the last hidden states over the attention mask.

    This is sentence-transformers' pooling for all-MiniLM-L6-v2 (which then L2-normalizes: pass
    ``normalize=True`` for the exact sentence-transformers vectors).
    """
    import torch

    device = _model_device(model)
    was_training = getattr(model, "training", False)
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for batch in sentence_batches(tokenizer, sentences, batch_size=batch_size, max_length=max_length):
                batch = {k: v.to(device) for k, v in batch.items()}
                hidden = _hidden_states(model, batch).float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                chunks.append(pooled.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)


@dataclasses.dataclass(frozen=True)
class Similarity:
    """Quantized-vs-original agreement of an encoder on a set of sentences (cosines in [-1, 1])."""

    pooled: float  # mean over sentences of cos(pooled_q, pooled_fp)
    pooled_min: float  # worst sentence
    hidden: float  # mean over non-padding tokens of cos(h_q, h_fp), last hidden states
    n_sentences: int
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def embedding_similarity(
    model_q: Any,
    model_fp: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> Similarity:
    """How closely ``model_q`` reproduces ``model_fp`` on ``sentences`` (both fed the same batches).

    Returns a :class:`Similarity`: mean (and minimum) cosine similarity of the mean-pooled sentence
    embeddings, and the mean cosine similarity of the last hidden states over all non-padding tokens.
    Cosines are computed in float64; a zero vector counts as similarity 0 unless both are zero.
    """
    import torch

    sentences = list(sentences)
    dev_q, dev_fp = _model_device(model_q), _model_device(model_fp)
    modes = (getattr(model_q, "training", False), getattr(model_fp, "training", False))
    model_q.eval()
    model_fp.eval()

    def cosine(a: Any, b: Any) -> Any:
        a, b = a.double(), b.double()
        na, nb = a.norm(dim=-1), b.norm(dim=-1)
        cos = (a * b).sum(dim=-1) / (na * nb).clamp(min=1e-300)
        return torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)

    pooled_cos, token_cos_sum, n_tokens = [], 0.0, 0
    try:
        with torch.inference_mode():
            for batch in sentence_batches(tokenizer, sentences, batch_size=batch_size, max_length=max_length):
                h_q = _hidden_states(model_q, {k: v.to(dev_q) for k, v in batch.items()}).double().cpu()
                h_fp = _hidden_states(model_fp, {k: v.to(dev_fp) for k, v in batch.items()}).double().cpu()
                mask = batch["attention_mask"].to(torch.float64)
                m = mask.unsqueeze(-1)
                p_q = (h_q * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
                p_fp = (h_fp * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
                pooled_cos.append(cosine(p_q, p_fp).numpy())
                token_cos_sum += float((cosine(h_q, h_fp) * mask).sum())
                n_tokens += int(mask.sum())
    finally:
        model_q.train(modes[0])
        model_fp.train(modes[1])
    pooled = np.concatenate(pooled_cos)
    return Similarity(
        pooled=float(pooled.mean()),
        pooled_min=float(pooled.min()),
        hidden=token_cos_sum / n_tokens,
        n_sentences=int(pooled.size),
        n_tokens=n_tokens,
    )
