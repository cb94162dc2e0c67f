"""Loads GPTQ checkpoints the way their consumers do; run by tests/test_consumers.py in the consumers' venv.

    python tests/consumer_gptq.py SPEC.json    (SPEC: {"cases": [{"name", "dir", "reference"}, ...]})

Imports neither quantease nor anything of this repository: it sees only the checkpoint directory (written by
save_gptq, with a tokenizer) and a reference .npz written by the test from quantease's QuantResults:
``ids`` (input tokens), ``logits`` (a dense float32 model carrying quantease's fp16-rounded weights), and per
quantized layer ``NAME.codes`` [N, K], ``NAME.scales`` (fp16 [N, G]), ``NAME.zeros`` [N, G], ``NAME.g_idx`` [K].

Each case is loaded through each load path (each consumer's default, and its torch kernel). For each it
reports whether lm_head is tied to the embedding, the kernel classes, the dtype, how many layers dequantize
bit-equal to quantease's grid evaluated in the layer's dtype (scales rounded to that dtype, as the kernels do),
and the relative error of the logits; or the error the loader raised. Prints one line ``REPORT {json}``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gptqmodel_default(path):
    from gptqmodel import GPTQModel

    return GPTQModel.load(path).model


def _gptqmodel_torch(path):
    from gptqmodel import GPTQModel

    # float16: GPTQModel's CPU default is bfloat16, which rounds the checkpoint's fp16 scales.
    return GPTQModel.load(path, backend="torch", dtype=torch.float16).model


def _transformers_default(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def _transformers_torch(path):
    from transformers import AutoModelForCausalLM, GPTQConfig

    with open(os.path.join(path, "config.json")) as f:
        bits = json.load(f)["quantization_config"]["bits"]
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=GPTQConfig(bits=bits, backend="gptq_torch"))


LOAD_PATHS = {
    "gptqmodel": _gptqmodel_default,
    "gptqmodel-torch": _gptqmodel_torch,
    "transformers": _transformers_default,
    "transformers-torch": _transformers_torch,
}


def _expected_weight(ref, name: str, dtype: torch.dtype) -> torch.Tensor:
    """quantease's grid with the scales in ``dtype``: what a correct kernel dequantizes, [N, K]."""
    g = torch.from_numpy(ref[f"{name}.g_idx"].astype(np.int64))
    scales = torch.from_numpy(ref[f"{name}.scales"]).to(dtype).float()[:, g]
    levels = torch.from_numpy(ref[f"{name}.codes"].astype(np.float32) - ref[f"{name}.zeros"][:, g.numpy()])
    return (scales * levels).to(dtype)


def _check(model, ref, layers) -> dict:
    model.eval()
    modules = dict(model.named_modules())
    kernels, equal = set(), 0
    for name in layers:
        module = modules[name]
        kernels.add(type(module).__name__)
        # Before the first forward: the fused kernels repack their buffers then.
        weight = module.dequantize_weight().T
        equal += bool(torch.equal(weight, _expected_weight(ref, name, weight.dtype)))
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["ids"])).logits.float()
    expected = torch.from_numpy(ref["logits"])
    output, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    return {
        "tied": output.data_ptr() == embedding.data_ptr(),
        "kernels": sorted(kernels),
        "dtype": str(weight.dtype).replace("torch.", ""),
        "weights_equal": equal,
        "layers": len(layers),
        "logits_rel_err": float((logits - expected).norm() / expected.norm()),
    }


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    torch.manual_seed(0)
    report = {}
    for case in spec["cases"]:
        ref = dict(np.load(case["reference"]))
        layers = sorted(k[: -len(".codes")] for k in ref if k.endswith(".codes"))
        report[case["name"]] = {}
        for label, load in LOAD_PATHS.items():
            try:
                report[case["name"]][label] = _check(load(case["dir"]), ref, layers)
            except Exception as e:  # a refusal is a result too: the test decides whether it was announced
                traceback.print_exc()
                report[case["name"]][label] = {"error": f"{type(e).__name__}: {e}"[:500]}
    versions = {}
    for package in ("torch", "gptqmodel", "transformers", "optimum", "kernels"):
        from importlib.metadata import version

        versions[package] = version(package)
    print("REPORT " + json.dumps({"versions": versions, "cases": report}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
