"""Export quantized layers to safetensors: GPTQ-packed checkpoints and quantease's own format.

One module per format, each with loaders that rebuild the dense weight (layouts in their module docstrings):

* ``save_gptq`` (quantease.export.gptq): uniform affine grids only, as the GPTQ tensors plus a
  ``quantization_config``; quantease.export.gptq_consumers says what GPTQModel and transformers + optimum do
  with them on CPU (verified by tests/test_consumers.py) and save_gptq warns where they fail.
* ``save_quantease`` (quantease.export.quantease_format): everything (affine grids, per-row/per-group
  codebooks, sparse CSR outliers), b-bit packed bytes, with a ``quantease_format`` version in the safetensors
  metadata. float32 storage rebuilds ``QuantResult.weight`` bit for bit.
* ``save_gguf`` (quantease.export.gguf): a whole llama model as a GGUF file that llama.cpp loads, its layers
  on the GGUF block types the pipeline solved them on (``quantize_model(..., gguf=...)``).

quantease.export.files holds what the formats share (paths, safetensors I/O, pass-through tensors) and
quantease.export.layers the layer specs and the layout check. safetensors is imported inside the functions
that need it (extras ``quantease[export]``); torch only when the caller passes torch tensors.
"""

from .gguf import save_gguf
from .gptq import (
    GPTQ_BITS,
    GPTQExport,
    gptq_deviation,
    gptq_tensors,
    load_gptq,
    load_gptq_layer,
    load_gptq_results,
    save_gptq,
    unpack_codes,
    unpack_gptq_layer,
)
from .gptq_consumers import GPTQ_CONSUMERS, GPTQConsumerWarning
from .quantease_format import (
    QUANTEASE_FORMAT_VERSION,
    load_quantease,
    load_quantease_results,
    load_quantease_state_dict,
    quantease_tensors,
    save_quantease,
)

__all__ = [
    "GPTQ_BITS",
    "GPTQ_CONSUMERS",
    "GPTQConsumerWarning",
    "GPTQExport",
    "QUANTEASE_FORMAT_VERSION",
    "gptq_tensors",
    "gptq_deviation",
    "save_gptq",
    "load_gptq",
    "load_gptq_results",
    "unpack_gptq_layer",
    "load_gptq_layer",
    "unpack_codes",
    "quantease_tensors",
    "save_quantease",
    "load_quantease",
    "load_quantease_results",
    "load_quantease_state_dict",
    "save_gguf",
]
