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

* :func:`lm_quality` scores the same windows and also says how sure the figure is and what the quantization
  did to each layer on held-out text: the perplexity's standard error over windows, each window's NLL (so
  two models on the same windows compare by a paired difference, :func:`compare`), and -- given the
  original weights -- every layer's relative loss on the evaluation tokens, ``||X (W - Ŵ)ᵀ||² / ||X Wᵀ||²``
  with X the inputs the layer receives in the quantized model (the held-out twin of the calibration
  objective ``loss / tr(W H Wᵀ)``, H from evaluation text through the same quantized prefix).

torch is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from ._validate import check_positive_int
from .text import eval_windows, sentence_batches

__all__ = [
    "perplexity",
    "window_nll",
    "context_length",
    "lm_quality",
    "LMQuality",
    "compare",
    "Difference",
    "reference_weights",
    "sentence_embeddings",
    "embedding_similarity",
    "Similarity",
]

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


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="window", leave=False)


def window_nll(model: Any, windows: Any, *, batch_size: int = 1, progress: bool = False) -> np.ndarray:
    """Summed next-token NLL (nats, float64) of each window; ``windows`` is (n, seq_len) token ids.

    Each window is scored independently: positions 1..seq_len-1 are predicted from the tokens before them
    in the same window. The model runs in eval mode under ``torch.inference_mode`` (its mode is restored).
    Returns an array of shape (n,); the number of predicted tokens is ``n * (seq_len - 1)``. ``progress``:
    a tqdm bar over the windows (when tqdm is installed).
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
    bar = _progress(windows.shape[0], "perplexity", progress)
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
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return out


def _windows(model: Any, tokenizer_or_ids: Any, text: str | None, seq_len: int | None, max_windows: int | None):
    if seq_len is None:
        ctx = context_length(model)
        if ctx is None:
            raise ValueError("the model's config gives no context length; pass seq_len")
        seq_len = min(ctx, MAX_DEFAULT_SEQ_LEN)
    return eval_windows(tokenizer_or_ids, text, seq_len=seq_len, max_windows=max_windows)


def perplexity(
    model: Any,
    tokenizer_or_ids: Any,
    text: str | None = None,
    *,
    seq_len: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> float:
    """Perplexity of a causal LM on ``text`` by the GPTQ-paper protocol (see the module docstring).

    tokenizer_or_ids: a tokenizer (then ``text`` is the evaluation text) or a 1-D sequence of token ids
        (then ``text`` is None).
    seq_len: window length; default the model's context length capped at 2048.
    max_windows: score only the first windows (all when None). On a CPU, bound it: every window is a full
        forward pass of the model.
    batch_size: windows per forward pass (memory: the logits take ``batch_size * seq_len * vocab * 4``
        bytes).
    progress: a tqdm bar over the windows.

    :func:`lm_quality` gives the same figure with its standard error.
    """
    windows = _windows(model, tokenizer_or_ids, text, seq_len, max_windows)
    nll = window_nll(model, windows, batch_size=batch_size, progress=progress)
    return math.exp(float(nll.sum()) / (windows.shape[0] * (windows.shape[1] - 1)))


def reference_weights(model: Any, skip: Sequence[str] = ("lm_head",)) -> dict[str, Any]:
    """{layer name: a copy of its weight} for every linear layer of ``model`` (names as
    ``quantease.torch.linear_layers``): take it before quantizing, pass it to :func:`lm_quality` as
    ``reference``."""
    from .blocks import linear_layers, weight_tensor

    return {name: weight_tensor(m).detach().clone() for name, m in linear_layers(model, skip=skip).items()}


@dataclasses.dataclass(frozen=True)
class LMQuality:
    """A causal LM scored on evaluation windows (see :func:`lm_quality`)."""

    perplexity: float
    se: float  # standard error of ``perplexity`` over windows (delta method)
    window_nll: np.ndarray  # mean NLL per predicted token of each window (nats)
    tokens: int  # predicted tokens
    layer_loss: dict[str, float] | None = None  # held-out relative layer loss per layer (given a reference)

    @property
    def mean_layer_loss(self) -> float | None:
        """The mean over layers of the held-out relative layer loss (as the pipeline's calibration figure)."""
        if not self.layer_loss:
            return None
        return float(np.mean(list(self.layer_loss.values())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "perplexity": self.perplexity,
            "se": self.se,
            "tokens": self.tokens,
            "window_nll": self.window_nll.tolist(),
            "layer_loss": self.layer_loss,
            "mean_layer_loss": self.mean_layer_loss,
        }


class _LayerDrift:
    """Forward hooks summing, per layer, ``||x (W0 - W)ᵀ||²`` and ``||x W0ᵀ||²`` over the rows x of its input:
    W is the layer's current (quantized) weight, W0 its reference. One extra product per call."""

    def __init__(self, layers: dict[str, Any], reference: dict[str, Any]):
        import torch

        from .blocks import is_conv1d

        self.sums: dict[str, list[float]] = {}
        self._handles = []
        for name, module in layers.items():
            w0 = torch.as_tensor(reference[name]).to(module.weight.device, module.weight.dtype)
            if tuple(w0.shape) != tuple(module.weight.shape):
                raise ValueError(
                    f"reference[{name!r}] must have the layer's weight shape "
                    f"{tuple(module.weight.shape)}, got {tuple(w0.shape)}"
                )
            self.sums[name] = [0.0, 0.0]
            self._handles.append(module.register_forward_hook(self._hook(name, w0, is_conv1d(module))))

    def _hook(self, name: str, w0: Any, conv1d: bool):
        import torch
        import torch.nn.functional as F

        sums = self.sums[name]

        def hook(module, args, output):
            x = args[0]
            delta = w0 - module.weight
            d = x @ delta if conv1d else F.linear(x, delta)
            y = output if module.bias is None else output - module.bias
            sums[0] += float(torch.sum(d.float().square(), dtype=torch.float64))
            sums[1] += float(torch.sum((y + d).float().square(), dtype=torch.float64))

        return hook

    def relative(self) -> dict[str, float]:
        return {
            name: (loss / energy if energy > 0 else (0.0 if loss == 0 else math.inf))
            for name, (loss, energy) in self.sums.items()
        }

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def lm_quality(
    model: Any,
    tokenizer_or_ids: Any,
    text: str | None = None,
    *,
    seq_len: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 1,
    reference: dict[str, Any] | None = None,
    layer_loss_windows: int | None = None,
    progress: bool = True,
) -> LMQuality:
    """Perplexity (as :func:`perplexity`, same arguments) with its standard error and per-window NLLs, and,
    with ``reference`` ({layer name: original weight}, e.g. :func:`reference_weights` taken before
    quantizing), each layer's relative loss on the evaluation tokens:
    ``Σ ||x (W0 - Ŵ)ᵀ||² / Σ ||x W0ᵀ||²`` over the inputs x the layer receives in ``model`` -- the
    calibration objective's held-out twin. A method that lowers the calibration objective but not this
    one fits its calibration sample. ``layer_loss_windows``: measure it on the first windows only (each
    costs one more product per layer; the default is every window).

    The standard error is the delta-method one of ``exp(mean NLL)`` over independent windows:
    ``ppl * std(window mean NLL) / sqrt(n_windows)``; it needs two windows at least (else NaN).
    """
    from .blocks import linear_layers

    windows = _windows(model, tokenizer_or_ids, text, seq_len, max_windows)
    n = windows.shape[0]
    split = n if layer_loss_windows is None else min(n, check_positive_int("layer_loss_windows", layer_loss_windows))
    drift = None
    if reference is not None:
        layers = linear_layers(model)
        missing = [name for name in reference if name not in layers]
        if missing:
            raise ValueError(f"reference names layers the model does not have: {', '.join(missing[:3])}")
        drift = _LayerDrift({name: layers[name] for name in reference}, reference)
    try:
        first = window_nll(model, windows[:split], batch_size=batch_size, progress=progress)
    finally:
        if drift is not None:
            drift.remove()
    rest = window_nll(model, windows[split:], batch_size=batch_size, progress=progress) if split < n else first[:0]
    nll = np.concatenate([first, rest])
    predicted = windows.shape[1] - 1
    per_token = nll / predicted
    ppl = math.exp(float(per_token.mean()))
    se = ppl * float(per_token.std(ddof=1)) / math.sqrt(per_token.size) if per_token.size > 1 else math.nan
    return LMQuality(
        perplexity=ppl,
        se=se,
        window_nll=per_token,
        tokens=int(per_token.size * predicted),
        layer_loss=None if drift is None else drift.relative(),
    )


@dataclasses.dataclass(frozen=True)
class Difference:
    """``a`` against ``b`` on the same windows: the ratio of their perplexities and its noise."""

    ratio: float  # ppl_a / ppl_b
    log_ratio: float  # mean over windows of (NLL_a - NLL_b) per token
    se: float  # standard error of log_ratio over windows (paired)

    def beyond_noise(self, z: float = 2.0) -> bool:
        """True when |log_ratio| exceeds ``z`` standard errors."""
        return bool(abs(self.log_ratio) > z * self.se)


def compare(a: LMQuality, b: LMQuality) -> Difference:
    """Paired comparison of two :class:`LMQuality` on the same windows (ValueError otherwise)."""
    if a.window_nll.shape != b.window_nll.shape or a.tokens != b.tokens:
        raise ValueError(
            f"compare needs the same windows: {a.window_nll.size} vs {b.window_nll.size} windows, "
            f"{a.tokens} vs {b.tokens} tokens"
        )
    d = a.window_nll - b.window_nll
    se = float(d.std(ddof=1)) / math.sqrt(d.size) if d.size > 1 else math.nan
    return Difference(ratio=a.perplexity / b.perplexity, log_ratio=float(d.mean()), se=se)


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
