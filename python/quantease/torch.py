"""quantease for PyTorch models: Hessians from forward hooks, and the sequential quantization pipeline.

    from quantease.torch import quantize_model
    report = quantize_model(model, batches, method="gptq", bits=4, group_size=128)
    print(report.to_markdown())

The public PyTorch API in one place. The hooks (``HessianCollector``, ``trace_input_groups``) live in
quantease.hooks, the pipeline (``quantize_model``) in quantease.pipeline and the block plumbing in
quantease.blocks; torch is imported only by these modules.
"""

from .blocks import find_blocks, linear_layers, resolve_blocks
from .hooks import HessianCollector, LayerTrace, trace_input_groups
from .pipeline import LayerRecord, QuantReport, quantize_model

__all__ = [
    "HessianCollector",
    "trace_input_groups",
    "LayerTrace",
    "quantize_model",
    "QuantReport",
    "LayerRecord",
    "find_blocks",
    "resolve_blocks",
    "linear_layers",
]
