"""What the pipeline tests share: a tiny random Llama, checkpoints written as sharded safetensors, and a byte-level
BPE tokenizer (no download).

tests/test_offload.py and tests/distributed_worker.py (and so tests/test_distributed.py) quantize ``model()``;
tests/offload_worker.py writes its 7B-shaped checkpoint with ``save_sharded``; GGUF exports take ``tokenizer()``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
import transformers

#: Rows of the embedding: the tokenizer's 260 tokens fit (save_gguf refuses a token beyond the embedding).
VOCAB = 264


def config(**overrides: Any) -> transformers.LlamaConfig:
    """3 blocks, hidden 64, grouped-query attention (4 heads, 2 KV heads), MLP 96, untied output."""
    settings: dict = dict(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return transformers.LlamaConfig(**settings)


def model(seed: int = 0) -> transformers.LlamaForCausalLM:
    """``config()``'s model with the random weights of ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config()).eval()


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
