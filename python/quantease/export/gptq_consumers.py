"""What the consumers' default CPU paths do with a GPTQ checkpoint, and what save_gptq writes or warns about.

Read from gptqmodel 6.0.3 and optimum 2.2.0 and checked by tests/test_consumers.py (gptqmodel 6.0.3,
transformers 5.9.0 + optimum 2.2.0, torch 2.13.0 CPU, offline; docs/gptq-consumers.md). GPTQModel.load(path) and
transformers' from_pretrained(path) (through optimum) both let gptqmodel pick the kernel. For 4-bit checkpoints
with the fused kernel's group sizes it picks TorchFusedQuantLinear, which repacks the weights for torch's int4
matmul as (q - 8) * scale: it drops the zero points, so its outputs are right only when every zero point is 8.
Every other checkpoint runs gptqmodel's torch kernel TorchQuantLinear (any zero points) if its group size is one
that kernel takes; no CPU kernel takes another.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

FUSED_CPU_GROUP_SIZES = (-1, 16, 32, 64, 128)
TORCH_KERNEL_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)
# transformers + optimum honour quantization_config["backend"] (GPTQModel.load does not): a checkpoint the fused
# kernel would miscompute carries this backend, which sends them to the torch kernel.
TORCH_KERNEL_BACKEND = "gptq_torch"
GPTQ_CONSUMERS = {
    "gptqmodel": "GPTQModel.load(path) (gptqmodel 6.0.3)",
    "transformers": "transformers' from_pretrained(path) (transformers 5.9.0 + optimum 2.2.0)",
}


class GPTQConsumerWarning(UserWarning):
    """save_gptq wrote a checkpoint that a consumer's default CPU path refuses or computes wrongly."""


def gptq_consumer_notes(
    bits: int, group_size: int, symmetric: bool, checkpoint_format: str
) -> Tuple[Optional[str], Dict[str, str]]:
    """(backend to write into quantization_config or None, {consumer: why its default CPU path fails}).

    symmetric: every zero point is 2^(bits-1), the grid GPTQ kernels assume when ``sym`` is true.
    checkpoint_format: "gptq" (v1) or "gptq_v2".
    """
    group_size = -1 if group_size <= 0 else group_size
    if group_size not in TORCH_KERNEL_GROUP_SIZES:
        why = (
            f"no CPU kernel of gptqmodel 6.0.3 takes group_size={group_size} (its torch kernel takes "
            f"{', '.join(map(str, TORCH_KERNEL_GROUP_SIZES))}): loading raises"
        )
        return None, {consumer: why for consumer in GPTQ_CONSUMERS}
    if symmetric:
        return None, {}
    notes: Dict[str, str] = {}
    backend = None
    if bits == 4 and group_size in FUSED_CPU_GROUP_SIZES:
        backend = TORCH_KERNEL_BACKEND
        notes["gptqmodel"] = (
            "asymmetric 4-bit checkpoints run on gptqmodel's fused CPU kernel TorchFusedQuantLinear "
            "(backend 'gptq_torch_fused'), which drops the zero points: wrong outputs. Load with "
            "GPTQModel.load(path, backend='torch'), or quantize with sym=True. (transformers + optimum are sent "
            f"to the torch kernel by quantization_config['backend'] = {TORCH_KERNEL_BACKEND!r})"
        )
    if checkpoint_format == "gptq":
        notes["gptqmodel"] = (
            "GPTQModel refuses asymmetric checkpoints in the v1 'gptq' format unless gptqmodel >= 0.9.0 wrote "
            "them; use checkpoint_format='gptq_v2'"
        )
    return backend, notes
