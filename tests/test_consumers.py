"""GPTQ checkpoints written by save_gptq, loaded by their consumers on CPU: GPTQModel and transformers + optimum.

The consumers live in their own environment (scripts/consumer-venv.sh, pinned by
scripts/consumer-constraints.txt): .ci/run builds it and passes its python in QUANTEASE_CONSUMER_PYTHON. Outside
CI the test uses that environment when it exists and is skipped otherwise; under CI a missing environment fails.

A tiny Llama-shaped model (2 blocks, tied embeddings, a word-level tokenizer for GPTQModel's loader) is quantized
with quantease's GPTQ for each export format we write; tests/consumer_gptq.py then loads every checkpoint through
each consumer's default path and through its torch kernel, comparing the dequantized layers bit for bit with
quantease's grid and the logits with a dense model carrying quantease's fp16-rounded weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from typing import NamedTuple, Optional

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import tiny_llama  # noqa: E402
from quantease import export  # noqa: E402
from quantease.torch import quantize_model  # noqa: E402
from real_data import real_data_available  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATHS = ("gptqmodel", "transformers")
TORCH_PATHS = ("gptqmodel-torch", "transformers-torch")
# Relative logit error of a correct load: bfloat16 kernels (GPTQModel's CPU default dtype, and the fused kernel
# for float32 inputs) stay under 1 % on this model; a kernel that drops the zero points gives about 70 %.
CORRECT_LOGITS = 0.03
# The tiny model's sizes (tiny_llama.model): the group sizes of CASES (32, 48) divide its 192 and 384 columns.
SIZES = dict(layers=2, hidden=192, mlp=384, vocab=256, context=128, tied=True)


class Case(NamedTuple):
    name: str
    bits: int
    group_size: int
    sym: bool
    act_order: bool
    checkpoint_format: Optional[str]  # None: save_gptq's default
    dtype: str  # the model's serving dtype, as its config.json says


CASES = (
    Case("sym4", 4, 32, True, False, None, "float16"),
    Case("asym4", 4, 32, False, False, None, "float16"),
    Case("asym4-v1", 4, 32, False, False, "gptq", "float16"),
    Case("asym3-act", 3, 32, False, True, None, "bfloat16"),
    Case("sym8-row", 8, -1, True, False, None, "float16"),
    Case("asym2-g48", 2, 48, False, False, None, "float16"),
)


def consumer_python() -> Optional[str]:
    explicit = os.environ.get("QUANTEASE_CONSUMER_PYTHON")
    if explicit:
        return os.path.abspath(explicit)  # the consumers run with cwd in a temporary folder
    venv = os.environ.get("CONSUMER_VENV") or os.path.join(
        os.environ.get("QUANTEASE_CACHE") or os.path.join(REPO, ".cache"), "venv-consumers"
    )
    stamp = os.path.join(venv, ".quantease-constraints")
    with open(os.path.join(REPO, "scripts", "consumer-constraints.txt")) as f:
        wanted = f.read()
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        return os.path.join(venv, "bin", "python")
    return None


def save_tokenizer(directory: str, vocab_size: int) -> None:
    """A word-level tokenizer: GPTQModel.load reads one from the checkpoint directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(directory)


def export_case(case: Case, directory: str, ids) -> dict:
    """Quantize the tiny model for ``case``, export it, write the reference; returns what the test checks."""
    model = tiny_llama.model(dtype=case.dtype, **SIZES)  # the weights stay float32
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, model.config.vocab_size, (1, 64), generator=generator) for _ in range(4)]
    report = quantize_model(
        model,
        calibration,
        method="gptq",
        bits=case.bits,
        group_size=case.group_size,
        sym=case.sym,
        solver_kwargs={"fp16_scales": True, "act_order": case.act_order},
        keep_results=True,
        progress=False,
    )
    path = os.path.join(directory, case.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = export.save_gptq(
            path,
            report.results,
            extra_tensors=model.state_dict(),
            config=model.config.to_dict(),
            checkpoint_format=case.checkpoint_format,
        )
    save_tokenizer(path, model.config.vocab_size)
    # The reference: the dense model with quantease's weights rounded to fp16 (what the file stores, bit for
    # bit with fp16_scales) and the pass-through tensors rounded to the serving dtype, run in float32.
    serving = getattr(torch, case.dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(serving).float())
        for name, r in report.results.items():
            model.get_submodule(name).weight.copy_(torch.from_numpy(r.weight.astype(np.float16).astype(np.float32)))
        logits = model(ids).logits.float().numpy()
    reference = {"ids": ids.numpy(), "logits": logits}
    for name, r in report.results.items():
        reference[f"{name}.codes"] = np.asarray(r.codes, dtype=np.uint8)
        reference[f"{name}.scales"] = np.asarray(r.scales, dtype=np.float32).astype(np.float16)
        reference[f"{name}.zeros"] = np.asarray(r.zeros, dtype=np.float32)
        reference[f"{name}.g_idx"] = np.asarray(r.g_idx, dtype=np.int32)
    np.savez(os.path.join(directory, f"{case.name}.npz"), **reference)
    return {
        "dir": path,
        "reference": os.path.join(directory, f"{case.name}.npz"),
        "export": written,
        "warnings": [str(w.message) for w in caught],
    }


@pytest.fixture(scope="module")
def consumers(tmp_path_factory):
    python = consumer_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the consumer check: build the environment with scripts/consumer-venv.sh")
        pytest.skip("the consumers' environment is not built (bash scripts/consumer-venv.sh)")
    directory = str(tmp_path_factory.mktemp("consumers"))
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(2))
    exports = {case.name: export_case(case, directory, ids) for case in CASES}
    spec = os.path.join(directory, "spec.json")
    with open(spec, "w") as f:
        json.dump({"cases": [{"name": n, "dir": e["dir"], "reference": e["reference"]} for n, e in exports.items()]}, f)
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the consumers' environment sees nothing of this repository
    proc = subprocess.run(
        [python, os.path.join(REPO, "tests", "consumer_gptq.py"), spec],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=directory,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-6000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    print(json.dumps(report, indent=1))
    return exports, report


def correct(result: dict) -> bool:
    return (
        "error" not in result
        and result["tied"]
        and result["weights_equal"] == result["layers"]
        and result["logits_rel_err"] <= CORRECT_LOGITS
    )


def test_the_consumers_are_the_pinned_releases(consumers):
    _, report = consumers
    assert report["versions"] == {
        "torch": "2.13.0+cpu",
        "gptqmodel": "6.0.3",
        "transformers": "5.9.0",
        "optimum": "2.2.0",
        "kernels": "0.12.3",
    }


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_default_paths_run_correctly_unless_the_export_warned(consumers, case):
    exports, report = consumers
    warned = exports[case]["export"].consumer_warnings
    for path in DEFAULT_PATHS:
        result = report["cases"][case][path]
        if path in warned:
            # The warning is true: this consumer refuses the file or computes wrong outputs.
            assert "error" in result or result["logits_rel_err"] > 10 * CORRECT_LOGITS, (path, result, warned)
            assert any(warned[path] in w for w in exports[case]["warnings"]), exports[case]["warnings"]
        else:
            assert correct(result), (path, result)


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_torch_kernel_paths_match_quantease_exactly(consumers, case):
    exports, report = consumers
    warned = exports[case]["export"].consumer_warnings
    for path in TORCH_PATHS:
        result = report["cases"][case][path]
        consumer = path.split("-")[0]
        if "error" in result:
            # Only a refusal announced at export time (e.g. GPTQModel and asymmetric v1 files).
            assert consumer in warned, (path, result)
            continue
        # The layers dequantize to quantease's weights bit for bit (in float16, or the model's bfloat16).
        assert result["weights_equal"] == result["layers"], (path, result)
        # The embedding, written once, serves as lm_head too.
        assert result["tied"], (path, result)
        assert result["logits_rel_err"] <= CORRECT_LOGITS, (path, result)


def test_what_the_readme_says_about_kernels(consumers):
    exports, report = consumers
    cases = report["cases"]
    # Symmetric 4-bit: both defaults run gptqmodel's fused CPU kernel, correctly.
    assert cases["sym4"]["gptqmodel"]["kernels"] == ["TorchFusedQuantLinear"]
    assert cases["sym4"]["transformers"]["kernels"] == ["TorchFusedQuantLinear"]
    # Asymmetric 4-bit: transformers + optimum are steered to the torch kernel by quantization_config.backend;
    # GPTQModel ignores that key, lands on the fused kernel, and the export warned.
    assert exports["asym4"]["export"].quantization_config["backend"] == "gptq_torch"
    assert cases["asym4"]["transformers"]["kernels"] == ["TorchQuantLinear"]
    assert cases["asym4"]["gptqmodel"]["kernels"] == ["TorchFusedQuantLinear"]
    assert "gptqmodel" in exports["asym4"]["export"].consumer_warnings
    # Other bit widths run the torch kernel on both defaults.
    for case in ("asym3-act", "sym8-row"):
        assert cases[case]["gptqmodel"]["kernels"] == cases[case]["transformers"]["kernels"] == ["TorchQuantLinear"]


# ------------------------------------------------------------------------------------ the size users expect


def export_rtn(model, directory: str, *, bits: int, group_size: int):
    """Every linear layer of the model's blocks rounded to a symmetric grid, exported with the model's state."""
    import quantease

    layers = {
        name: quantease.rtn(
            module.weight.detach().float().numpy(), bits=bits, group_size=group_size, sym=True, fp16_scales=True
        )
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }
    return export.save_gptq(directory, layers, extra_tensors=model.state_dict(), config=model.config.to_dict())


def check_size(model, written) -> None:
    from safetensors import safe_open

    with safe_open(written.tensor_file, framework="pt") as f:
        keys = set(f.keys())
        dtypes = {str(f.get_slice(k).get_dtype()) for k in keys if not k.endswith((".qweight", ".qzeros", ".g_idx"))}
    # The tied output embedding is not written again, every float is float16, and the reported float16 size is
    # the model's: its parameters (tied ones once) at 2 bytes.
    assert "lm_head.weight" not in keys and dtypes == {"F16"}
    assert written.fp16_bytes == 2 * sum(p.numel() for p in model.parameters())
    assert written.file_bytes == os.path.getsize(written.tensor_file)


def test_tiny_llama_export_is_tied_float16_and_reports_its_size(tmp_path):
    model = tiny_llama.model(dtype="float32", **SIZES)
    written = export_rtn(model, str(tmp_path), bits=4, group_size=32)
    check_size(model, written)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert config["dtype"] == "float16" and config["tie_word_embeddings"] is True


real = pytest.mark.skipif(
    not real_data_available(["smollm2-135m"], []),
    reason="real models not in the cache (set QUANTEASE_REAL=1 to fetch them)",
)


@pytest.mark.real_model
@real
def test_real_smollm2_four_bit_checkpoint_size(tmp_path):
    from quantease import models

    model, _ = models.load_causal_lm("smollm2-135m")
    written = export_rtn(model, str(tmp_path), bits=4, group_size=64)
    check_size(model, written)
    print(f"SmolLM2-135M 4-bit g64: {written.file_bytes / 1e6:.1f} MB, float16 {written.fp16_bytes / 1e6:.1f} MB")
    # 4-bit layers (30 blocks, 106 M weights) plus the float16 embedding (28 M): about 43 % of float16.
    assert written.size_ratio < 0.45
