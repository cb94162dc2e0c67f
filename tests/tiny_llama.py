"""What the tests share: the one builder of a tiny random Llama, checkpoints written as sharded safetensors, and a
byte-level BPE tokenizer (no download).

Every test's tiny Llama comes from ``model()``: grouped-query attention (4 heads, 2 KV heads) with the sizes the
test needs (tests/test_torch_pipeline.py, tests/resume_child.py, tests/test_consumers.py, tests/test_gguf_model.py,
tests/test_models_eval.py); tests/test_offload.py and tests/distributed_worker.py (and so tests/test_distributed.py)
quantize the default one. tests/offload_worker.py writes its 7B-shaped checkpoint with ``save_sharded``; GGUF exports
take ``tokenizer()``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import torch
import transformers

#: Rows of the embedding: the tokenizer's 260 tokens fit (save_gguf refuses a token beyond the embedding).
VOCAB = 264


def config(
    *,
    layers: int = 3,
    hidden: int = 64,
    mlp: int = 96,
    vocab: int = VOCAB,
    context: int = 64,
    tied: bool = False,
    dtype: Optional[str] = None,
) -> transformers.LlamaConfig:
    """A Llama of ``layers`` blocks of width ``hidden`` with grouped-query attention (4 heads, 2 KV heads) and an
    MLP of ``mlp``, ``vocab`` tokens, ``context`` positions, the output tied to the embedding or not; ``dtype``
    (e.g. "float16") is what the config declares, the dtype a checkpoint of it is served in."""
    settings: dict = dict(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=mlp,
        vocab_size=vocab,
        max_position_embeddings=context,
        tie_word_embeddings=tied,
    )
    if dtype is not None:
        settings["dtype"] = dtype
    return transformers.LlamaConfig(**settings)


def model(seed: int = 0, **sizes: Any) -> transformers.LlamaForCausalLM:
    """``config(**sizes)``'s model with the random weights of ``seed``, in eval mode. Its weights are float32
    whatever the config's ``dtype`` declares."""
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config(**sizes)).eval()


def save_sharded(path: str, shards: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Shards of a safetensors checkpoint directory: one file per entry of ``shards`` ({file name: {tensor name:
    tensor}}), added to the ``model.safetensors.index.json`` that maps every tensor to its file (as large
    checkpoints are sharded); a caller writing a large model calls it once per shard."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    index = os.path.join(path, "model.safetensors.index.json")
    weight_map = {}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    for file, tensors in shards.items():
        save_file(dict(tensors), os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
    with open(index, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style): <|endoftext|>, the 256 byte symbols and 3 merges (260 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
