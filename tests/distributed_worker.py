"""One rank of tests/test_distributed.py's torchrun runs, and the model and data those tests share with their
single-process runs: tests/tiny_llama.py's model (3 blocks, grouped-query attention, hidden 64) on 5
calibration batches (uneven shards on 2 ranks), right-padded so the attention masks reach every block.

    torchrun --nproc_per_node=2 tests/distributed_worker.py OUT [CHECKPOINT_DIR] [--offload SOURCE [--gguf MIX]]

writes OUT.rank<r>.npz (every linear weight, the solvers' codes and each record's token count),
OUT.hessians<r>.npz (the H of each layer rank r solved) and OUT.rank<r>.json (the report's records and
resumed_blocks) on every rank. With ``--offload SOURCE`` (the model saved as safetensors) every rank starts
from a meta-device skeleton and reads its blocks from SOURCE (quantease.offload); rank 0 streams the quantized
model to the directory OUT.model (with ``--gguf MIX``: solved on that GGUF mix, to the file OUT.gguf), and the
npz holds no weights (none stay in memory).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

import tiny_llama
from quantease.pipeline import QuantReport, quantize_model

VOCAB, SEQ, BATCHES = tiny_llama.VOCAB, 12, 5
OPTIONS: Dict[str, Any] = dict(
    method="gptq", bits=4, group_size=32, progress=False, keep_results=True, solver_kwargs={"act_order": True}
)


def make_model() -> torch.nn.Module:
    return tiny_llama.model()


def make_batches() -> list:
    g = torch.Generator().manual_seed(1)
    out = []
    for j in range(BATCHES):
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
        mask = torch.ones_like(ids)
        mask[1, SEQ - 1 - j :] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def run(
    checkpoint_dir: Optional[str] = None, model: Optional[torch.nn.Module] = None, **kwargs: Any
) -> Tuple[torch.nn.Module, QuantReport]:
    """The model (default: make_model()) quantized; ``report.hessians`` holds the H of every layer this process
    solved."""
    model = make_model() if model is None else model
    hessians: Dict[str, np.ndarray] = {}

    def keep(record, result, H):
        if H is not None:
            hessians[record.name] = H.copy()

    report = quantize_model(model, make_batches(), checkpoint_dir=checkpoint_dir, on_layer=keep, **OPTIONS, **kwargs)
    report.hessians = hessians
    return model, report


def arrays(model: torch.nn.Module, report: QuantReport) -> Dict[str, np.ndarray]:
    """Every linear weight, every quantized layer's codes, and each record's token count."""
    out = {
        f"weight/{n}": m.weight.detach().numpy().copy()
        for n, m in model.named_modules()
        if hasattr(m, "weight") and m.weight.device.type != "meta"
    }
    out.update({f"codes/{n}": np.asarray(r.codes) for n, r in report.results.items()})
    out.update({f"tokens/{r.name}": np.array(r.n_samples) for r in report})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("checkpoint_dir", nargs="?")
    parser.add_argument("--offload", metavar="SOURCE")
    parser.add_argument("--gguf", metavar="MIX", help="with --offload: solve on this GGUF mix, stream OUT.gguf")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out
    if args.offload:
        from quantease.offload import Offload, empty_model

        if args.gguf:
            offload = Offload(args.offload, f"{out}.gguf", format="gguf", tokenizer=tiny_llama.tokenizer())
            extra: Dict[str, Any] = dict(gguf=args.gguf)
        else:
            offload, extra = Offload(args.offload, f"{out}.model"), {}
        model = empty_model(args.offload)
        model, report = run(args.checkpoint_dir, model=model, offload=offload, distributed=True, **extra)
    else:
        model, report = run(args.checkpoint_dir, distributed=True)
    rank = int(os.environ["RANK"])  # the run destroyed the process group it created
    np.savez(f"{out}.rank{rank}.npz", **arrays(model, report))
    np.savez(f"{out}.hessians{rank}.npz", **report.hessians)
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"records": report.to_dicts(), "resumed_blocks": report.resumed_blocks}, f)


if __name__ == "__main__":
    main()
