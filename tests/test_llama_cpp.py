"""llama.cpp itself on our GGUF files of SmolLM2-135M: it loads them, generates, and its perplexity agrees
with quantease's evaluation of the same weights; llama-quantize's own files have the tensor types (and so the
size) that quantease.gguf_mixes predicts; llama-quantize's rounding equals quantease.rtn(gguf=...) byte for byte.

Needs llama.cpp's tools (scripts/build_llama_cpp.sh, minutes on the first call, cached after) and the real
model: runs with QUANTEASE_LLAMA_CPP=1 and QUANTEASE_REAL=1 (CI sets both).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

import quantease  # noqa: E402
from quantease import gguf_mixes, models, text  # noqa: E402
from quantease.export import save_gguf  # noqa: E402
from quantease.pipeline import quantize_model  # noqa: E402
from real_data import real_data_available  # noqa: E402

pytestmark = [
    pytest.mark.llama_cpp,
    pytest.mark.real_model,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("QUANTEASE_LLAMA_CPP") != "1" or not real_data_available(["smollm2-135m"], ["wiki"]),
        reason="needs QUANTEASE_LLAMA_CPP=1 (llama.cpp's tools) and the real SmolLM2 (QUANTEASE_REAL=1)",
    ),
]

_spec = importlib.util.spec_from_file_location(
    "llama_cpp", Path(__file__).resolve().parents[1] / "bench" / "llama_cpp.py"
)
llama_cpp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_cpp)

CTX, CHUNKS = 128, 6  # llama-perplexity: 6 chunks of 128 tokens (the second halves scored)
THREADS = 2


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """llama.cpp's tools, the texts as files, SmolLM2's template and its F32 GGUF with an imatrix."""
    root = tmp_path_factory.mktemp("llama_cpp")
    bin_dir = llama_cpp.tools_dir()
    calib_text = text.load_text("wiki", "train")[:60_000]
    held_out = text.load_text("wiki", "test")[:20_000]
    (root / "calib.txt").write_text(calib_text)
    (root / "test.txt").write_text(held_out)
    model, tok = models.load_causal_lm("smollm2-135m")
    template = models.source_gguf("smollm2-135m")
    save_gguf(model, root / "f32.gguf", template=template)
    llama_cpp.imatrix(
        root / "f32.gguf",
        root / "calib.txt",
        root / "imatrix.gguf",
        ctx=CTX,
        chunks=16,
        bin_dir=bin_dir,
        threads=THREADS,
    )
    return {
        "root": root,
        "bin": bin_dir,
        "template": template,
        "tok": tok,
        "calib_text": calib_text,
        "held_out": held_out,
    }


_QUANTIZED = {}


def quantized(work, method, mix, own_metadata):
    """SmolLM2 quantized by ``method`` on llama.cpp's ``mix`` and written as GGUF (once per module)."""
    key = (method, mix, own_metadata)
    if key not in _QUANTIZED:
        model, tok = models.load_causal_lm("smollm2-135m")
        calib = text.calibration_batches(tok, work["calib_text"], n_samples=8, seq_len=256)
        kwargs = {"iters": 6, "init": "gptq"} if method == "quantease" else {}
        report = quantize_model(model, calib, method=method, gguf=mix, progress=False, solver_kwargs=kwargs)
        path = work["root"] / f"{method}-{mix}{'-own' if own_metadata else ''}.gguf"
        source = {"tokenizer": tok} if own_metadata else {"template": work["template"]}
        written = save_gguf(model, path, report, **source)
        _QUANTIZED[key] = (model, report, path, written)
    return _QUANTIZED[key]


@pytest.mark.parametrize("method", ["gptq", "quantease"])
def test_llama_cpp_runs_our_q4_0_with_our_perplexity(work, method):
    """Our file (metadata and tokenizer written from the Hugging Face model) loads, generates, and
    llama-perplexity matches the same weights evaluated in PyTorch by the same protocol."""
    model, report, path, written = quantized(work, method, "Q4_0", own_metadata=True)
    out = llama_cpp.generate(path, "The capital of France is", tokens=12, bin_dir=work["bin"], threads=THREADS)
    assert out.startswith("The capital of France is") and len(out) > len("The capital of France is") + 5
    stats = llama_cpp.perplexity_stats(
        path, work["root"] / "test.txt", ctx=CTX, chunks=CHUNKS, bin_dir=work["bin"], threads=THREADS
    )
    ppl = stats["ppl"]
    assert math.isfinite(ppl) and 0 < stats["se"] < ppl
    # Every chunk's NLL, recovered from the running estimates: their mean is the final estimate's log
    # (running estimates print 4 decimals).
    assert len(stats["chunk_nll"]) == CHUNKS
    assert math.exp(sum(stats["chunk_nll"]) / CHUNKS) == pytest.approx(ppl, rel=1e-3)
    # The same weights in PyTorch: the layers as solved, the tied embedding as the file's Q8_0.
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        q8 = quantease.rtn(embed.detach().numpy(), gguf=written["token_embd.weight"]).weight
        embed.copy_(torch.from_numpy(q8))
    ids = text.tokenize(work["tok"], work["held_out"])
    ours = llama_cpp.chunk_perplexity(model, ids, ctx=CTX, chunks=CHUNKS)
    # llama.cpp multiplies Q4_0 weights with activations rounded to 8 bits: a few tenths of a percent.
    assert ppl == pytest.approx(ours, rel=0.02), (ppl, ours)


def test_llama_cpp_runs_our_k_quant_mix_from_template(work):
    model, report, path, written = quantized(work, "gptq", "Q4_K_M", own_metadata=False)
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= set(written.values())
    out = llama_cpp.generate(path, "Once upon a time", tokens=12, bin_dir=work["bin"], threads=THREADS)
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time") + 5
    ppl = llama_cpp.perplexity(
        path, work["root"] / "test.txt", ctx=CTX, chunks=CHUNKS, bin_dir=work["bin"], threads=THREADS
    )
    assert math.isfinite(ppl) and ppl < 100


def tensor_types(path):
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("mix", ["Q4_0", "IQ4_NL", "Q4_K_M", "Q3_K_M"])
def test_mix_types_equal_llama_quantize(work, mix):
    out = work["root"] / f"llama-{mix}.gguf"
    llama_cpp.quantize(
        work["root"] / "f32.gguf",
        out,
        mix,
        imatrix_file=work["root"] / "imatrix.gguf",
        bin_dir=work["bin"],
        threads=THREADS,
    )
    theirs = tensor_types(out)
    predicted = {}
    for t in gguf.GGUFReader(str(work["root"] / "f32.gguf")).tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        predicted[t.name] = (
            "F32"
            if len(shape) == 1
            else gguf_mixes.tensor_type(mix, t.name, shape, n_layer=30, n_head=9, n_head_kv=3, tied_embeddings=True)
        )
    assert predicted == theirs
    if mix in ("Q4_0", "Q4_K_M"):
        _, _, ours, written = quantized(work, "gptq", mix, own_metadata=mix == "Q4_0")
        assert written == theirs
        # Same tensor types, so the same tensor bytes (llama-quantize's file adds a few imatrix metadata keys).
        assert data_bytes(ours) == data_bytes(out)


def data_bytes(path):
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def imatrix_of(path, name):
    """llama-quantize's importance vector of tensor ``name``: the summed x^2 over its token count."""
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    sums, counts = tensors[f"{name}.in_sum2"].reshape(-1), tensors[f"{name}.counts"].reshape(-1)
    return (sums / np.float32(counts[0])).astype(np.float32)


@pytest.mark.parametrize("mix", ["Q4_0", "Q4_K_M"])
def test_rtn_equals_llama_quantize_bytes(work, mix):
    """quantease.rtn(W, gguf=T[, imatrix]) gives the bytes llama-quantize writes, with and without the
    importance matrix (llama.cpp's reference quantizer and its imatrix search)."""
    f32 = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(work["root"] / "f32.gguf")).tensors}
    for imatrix in (False, True):
        out = work["root"] / f"llama-{mix}-{imatrix}.gguf"
        llama_cpp.quantize(
            work["root"] / "f32.gguf",
            out,
            mix,
            bin_dir=work["bin"],
            threads=THREADS,
            imatrix_file=work["root"] / "imatrix.gguf" if imatrix else None,
        )
        for t in gguf.GGUFReader(str(out)).tensors:
            if t.name not in (
                "blk.0.ffn_down.weight",
                "blk.3.ffn_down.weight",
                "blk.7.attn_q.weight",
                "token_embd.weight",
            ):
                continue
            weights = (
                imatrix_of(work["root"] / "imatrix.gguf", t.name) if imatrix and t.name != "token_embd.weight" else None
            )
            ours = quantease.gguf.pack(quantease.rtn(f32[t.name], gguf=t.tensor_type.name, imatrix=weights))
            np.testing.assert_array_equal(ours, np.asarray(t.data), err_msg=f"{mix} {t.name} imatrix={imatrix}")
