"""The process of tests/test_offload.py's memory test (a fresh interpreter, so its peak RSS is the run's).

    python offload_worker.py make PATH BLOCKS     # a synthetic float16 Llama with 7B-shaped blocks on disk
    python offload_worker.py quantize PATH OUT [FORMAT]   # quantize it block by block from disk, streaming
                                                          # FORMAT (dense: safetensors shards; gguf: one GGUF
                                                          # file, Q4_0) to OUT; prints JSON figures

The checkpoint has one safetensors shard per block (as large checkpoints are sharded) and tests/tiny_llama.py's
small vocabulary (its tokenizer goes into the GGUF file); its weights are random (std 0.02), its norms ones.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import transformers

import tiny_llama

HIDDEN, MLP, HEADS = 4096, 11008, 32
# The solver's loss and the energy tr(W H W^T) cost rows x cols^2 per layer: the memory test quantizes the
# attention's k and v projections (sharing one 4096^2 Hessian with q) and streams every other layer as it is.
SKIP = ("q_proj", "o_proj", "mlp")


def config(blocks: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        num_hidden_layers=blocks,
        hidden_size=HIDDEN,
        intermediate_size=MLP,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        vocab_size=tiny_llama.VOCAB,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        dtype="float16",
    )


def make(path: str, blocks: int) -> None:
    from quantease.offload import empty_model

    os.makedirs(path, exist_ok=True)
    config(blocks).save_pretrained(path)
    skeleton = empty_model(path)
    g = torch.Generator().manual_seed(0)

    def random(prefix: str, module: torch.nn.Module) -> dict:
        tensors = {}
        for name, p in module.named_parameters():
            if p.ndim == 1:
                tensors[prefix + name] = torch.ones(p.shape, dtype=torch.float16)
            else:
                tensors[prefix + name] = (torch.randn(p.shape, generator=g) * 0.02).to(torch.float16)
        return tensors

    # One block's tensors in memory at a time: each shard is written before the next is drawn.
    for i, block in enumerate(skeleton.model.layers):
        tiny_llama.save_sharded(path, {f"model-{i:05d}.safetensors": random(f"model.layers.{i}.", block)})
    rest = torch.nn.Module()
    rest.embed_tokens, rest.norm = skeleton.model.embed_tokens, skeleton.model.norm
    head = torch.nn.ModuleDict({"lm_head": skeleton.lm_head})
    tiny_llama.save_sharded(
        path, {"model-rest.safetensors": random("model.", rest), "model-head.safetensors": random("", head)}
    )


def rss_mib(field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of this process's address space, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def quantize(path: str, out: str, format: str = "dense") -> None:
    from quantease.offload import Offload, empty_model
    from quantease.pipeline import quantize_model

    model = empty_model(path)
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, tiny_llama.VOCAB, (1, 16), generator=g)}]
    if format == "gguf":  # the solved layers on Q4_0 blocks, the others rounded to the mix's types on the way out
        grid: dict = dict(gguf="Q4_0")
        offload = Offload(path, out, format="gguf", tokenizer=tiny_llama.tokenizer())
    else:
        grid = dict(bits=4, group_size=128)
        offload = Offload(path, out, format=format)
    before = rss_mib()
    report = quantize_model(
        model,
        batches,
        method="rtn",
        skip=SKIP,
        true_sequential=False,
        progress=False,
        offload=offload,
        **grid,
    )
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak through fork and exec into the child's
    # ru_maxrss, so inside a test suite that had loaded models it reported the pytest process's peak.
    peak = rss_mib("VmHWM")
    figures = {"layers": len(report), "rss_before_mib": round(before), "peak_rss_mib": round(peak)}
    print(json.dumps(figures))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]))
    else:
        quantize(*sys.argv[2:5])
