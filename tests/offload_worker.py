"""The process of tests/test_offload.py's memory test (a fresh interpreter, so its peak RSS is the run's).

    python offload_worker.py make PATH BLOCKS     # a synthetic float16 Llama with 7B-shaped blocks on disk
    python offload_worker.py quantize PATH OUT    # quantize it block by block from disk; prints JSON figures

The checkpoint has one safetensors shard per block (as large checkpoints are sharded) and a small vocabulary;
its weights are random (std 0.02), its norms ones.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import transformers

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
        vocab_size=256,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        dtype="float16",
    )


def make(path: str, blocks: int) -> None:
    from safetensors.torch import save_file

    from quantease.offload import empty_model

    os.makedirs(path, exist_ok=True)
    config(blocks).save_pretrained(path)
    skeleton = empty_model(path)
    g = torch.Generator().manual_seed(0)
    weight_map = {}

    def shard(file: str, prefix: str, module: torch.nn.Module) -> None:
        tensors = {}
        for name, p in module.named_parameters():
            if p.ndim == 1:
                tensors[prefix + name] = torch.ones(p.shape, dtype=torch.float16)
            else:
                tensors[prefix + name] = (torch.randn(p.shape, generator=g) * 0.02).to(torch.float16)
        save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in tensors})

    for i, block in enumerate(skeleton.model.layers):
        shard(f"model-{i:05d}.safetensors", f"model.layers.{i}.", block)
    rest = torch.nn.Module()
    rest.embed_tokens, rest.norm = skeleton.model.embed_tokens, skeleton.model.norm
    shard("model-rest.safetensors", "model.", rest)
    shard("model-head.safetensors", "", torch.nn.ModuleDict({"lm_head": skeleton.lm_head}))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def rss_mib(field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of this process's address space, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def quantize(path: str, out: str) -> None:
    from quantease.offload import Offload, empty_model
    from quantease.pipeline import quantize_model

    model = empty_model(path)
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 256, (1, 16), generator=g)}]
    before = rss_mib()
    report = quantize_model(
        model,
        batches,
        method="rtn",
        bits=4,
        group_size=128,
        skip=SKIP,
        true_sequential=False,
        progress=False,
        offload=Offload(path, out),
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
        quantize(sys.argv[2], sys.argv[3])
