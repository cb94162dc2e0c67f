"""Peers the benchmarks compare against, run on identical NumPy inputs.

- ``torch_gptq.gptq``           -- PyTorch-CPU port of the GPTQ authors' fasterquant loop.
- ``torch_quantease.quantease`` -- PyTorch-CPU port of the official QuantEase column loop.
- ``torch_leanquant.leanquant`` -- PyTorch-CPU port of the official LeanQuant non-uniform path.
- ``installed``                 -- adapters to installed peer packages (gptqmodel, llmcompressor,
                                   auto-gptq, hqq, bitsandbytes) with "not installable: <reason>" reports.

The torch ports import torch lazily: ``import bench.peers`` works without torch.
See README.md beside this file.
"""

__all__ = ["torch_gptq", "torch_quantease", "torch_leanquant", "installed"]
