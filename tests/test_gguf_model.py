"""Model-level GGUF: llama.cpp's type mixes, quantize_model(..., gguf=...) and export.save_gguf.

A tiny random llama model with a byte-level BPE tokenizer (no download) checks the file bit for bit: every
tensor read back with the `gguf` package (llama.cpp's reference dequantization) equals what the pipeline
wrote into the model, after llama.cpp's attn_q/attn_k row permutation. The real SmolLM2 checks (template
copy, own metadata against the shipped GGUF's) need the real model (QUANTEASE_REAL=1). llama.cpp itself
runs in tests/test_llama_cpp.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

import quantease  # noqa: E402
from quantease import gguf_mixes  # noqa: E402
from quantease.export import save_gguf  # noqa: E402
from quantease.pipeline import quantize_model  # noqa: E402
from real_data import real_data_available  # noqa: E402
from tiny_llama import VOCAB  # noqa: E402
from tiny_llama import model as tiny_model  # noqa: E402
from tiny_llama import tokenizer as tiny_tokenizer  # noqa: E402

SMOLLM2 = dict(n_layer=30, n_head=9, n_head_kv=3)


def smollm2_type(mix, name, cols, imatrix=True, rows=576):
    return gguf_mixes.tensor_type(mix, name, (rows, cols), imatrix=imatrix, tied_embeddings=True, **SMOLLM2)


def test_mix_rules_follow_llama_quantize():
    # Q4_0 with an importance matrix: llama.cpp guards the first eighth of ffn_down with Q4_1.
    assert [smollm2_type("Q4_0", f"blk.{i}.ffn_down.weight", 1536) for i in (0, 2, 3)] == ["Q4_1", "Q4_1", "Q4_0"]
    assert smollm2_type("Q4_0", "blk.0.ffn_down.weight", 1536, imatrix=False) == "Q4_0"
    assert smollm2_type("Q4_0", "token_embd.weight", 576, rows=49152) == "Q8_0"  # tied: output rule, Q6_K -> Q8_0
    assert smollm2_type("IQ4_NL", "blk.0.ffn_down.weight", 1536) == "IQ4_NL"
    assert smollm2_type("IQ4_NL", "blk.0.ffn_down.weight", 1536, imatrix=False) == "Q5_K"
    # Q4_K_M: 256-blocks do not divide 576 -> Q4_K falls back to Q5_0, Q6_K to Q8_0.
    assert smollm2_type("Q4_K_M", "blk.4.attn_q.weight", 576) == "Q5_0"
    assert smollm2_type("Q4_K_M", "blk.0.attn_v.weight", 576) == "Q8_0"
    assert [smollm2_type("Q4_K_M", f"blk.{i}.ffn_down.weight", 1536) for i in (0, 3, 4, 5, 26)] == [
        "Q6_K",
        "Q4_K",
        "Q4_K",
        "Q6_K",
        "Q6_K",
    ]
    assert [smollm2_type("Q3_K_M", f"blk.{i}.ffn_down.weight", 1536) for i in (0, 1)] == ["Q5_K", "Q4_K"]
    assert smollm2_type("Q3_K_M", "blk.0.attn_v.weight", 576) == "Q5_1"
    assert smollm2_type("Q3_K_M", "blk.9.attn_output.weight", 576) == "Q5_0"
    assert smollm2_type("Q3_K_M", "blk.9.ffn_up.weight", 576) == "Q4_0"
    # An untied 4096-wide output matrix gets Q6_K; a pure type stays itself; 100 columns fit no block.
    assert (
        gguf_mixes.tensor_type("Q4_K_M", "output.weight", (32000, 4096), n_layer=32, n_head=32, n_head_kv=8) == "Q6_K"
    )
    assert (
        gguf_mixes.tensor_type("Q4_K", "blk.0.attn_v.weight", (1024, 4096), n_layer=32, n_head=32, n_head_kv=8)
        == "Q4_K"
    )
    assert gguf_mixes.fallback_type("Q6_K", 100) == "F16"
    with pytest.raises(ValueError, match="gguf type mix must be one of"):
        smollm2_type("Q4_X", "blk.0.attn_q.weight", 576)


# ------------------------------------------------------------------------------------------- a tiny llama


def tiny_llama(intermediate=512, tied=False, seed=0):
    """Hidden 256: the K-quants' 256-column super-blocks fit; tiny_llama.VOCAB tokens, the tokenizer's."""
    return tiny_model(seed, layers=2, hidden=256, mlp=intermediate, tied=tied)


def calibration(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 32), generator=gen) for _ in range(2)]


def unpermute(rows, n_head):
    """Inverse of llama.cpp's attn_q/attn_k row order."""
    perm = np.arange(rows.shape[0]).reshape(n_head, 2, -1).swapaxes(1, 2).reshape(-1)
    out = np.empty_like(rows)
    out[perm] = rows
    return out


def read_back(path):
    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, data.astype(np.float32))
    return reader, tensors


def hf_weight(model, gguf_name, tensors):
    """The file's tensor of an HF parameter, rows back in Hugging Face order."""
    ggml_type, data = tensors[gguf_name]
    if ".attn_q." in gguf_name or ".attn_k." in gguf_name:
        heads = model.config.num_attention_heads if ".attn_q." in gguf_name else model.config.num_key_value_heads
        data = unpermute(data, heads)
    return ggml_type, data


@pytest.mark.parametrize(
    "method,mix,kwargs",
    [("gptq", "Q4_0", {}), ("quantease", "Q4_K_M", {"init": "gptq", "iters": 3}), ("rtn", "IQ4_NL", {})],
)
def test_save_gguf_reads_back_bit_exact(tmp_path, method, mix, kwargs):
    model, tok = tiny_llama(), tiny_tokenizer()
    report = quantize_model(model, calibration(), method=method, gguf=mix, progress=False, solver_kwargs=kwargs)
    assert report.gguf.mix == mix and len(report.results) == 14
    written = save_gguf(model, tmp_path / "m.gguf", report, tokenizer=tok)
    reader, tensors = read_back(tmp_path / "m.gguf")
    assert written == {name: ggml_type for name, (ggml_type, _) in tensors.items()}
    for name, param in model.named_parameters():
        module, kind = name.rsplit(".", 1)
        gguf_name = f"{gguf_mixes.gguf_tensor_name(module)}.{kind}"
        ggml_type, data = hf_weight(model, gguf_name, tensors)
        if module in report.results:
            # The solver's blocks: llama.cpp's dequantization gives back result.weight, which is the model's.
            assert ggml_type == report.gguf.types[module] == report.results[module].gguf.type
            np.testing.assert_array_equal(data, report.results[module].weight)
            np.testing.assert_array_equal(data, param.detach().numpy())
        elif param.dim() == 2:
            # Embedding and output: llama-quantize's own rounding for the mix's type.
            expected = gguf_mixes.tensor_type(
                mix, gguf_name, tuple(param.shape), n_layer=2, n_head=4, n_head_kv=2, imatrix=method != "rtn"
            )
            assert ggml_type == expected
            np.testing.assert_array_equal(data, quantease.rtn(param.detach().numpy(), gguf=expected).weight)
        else:
            assert ggml_type == "F32"
            np.testing.assert_array_equal(data, param.detach().numpy())
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.file_type"].contents() == gguf_mixes.FILE_TYPES[mix]
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["llama.rope.dimension_count"].contents() == 64
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 264 and tokens[259] == "Ġthe" and tokens[263] == "[PAD263]"
    assert fields["tokenizer.ggml.merges"].contents() == ["Ġ t", "h e", "Ġt he"]
    assert fields["tokenizer.ggml.token_type"].contents()[:2] == [3, 1]


def test_mix_fallback_and_explicit_choices(tmp_path):
    # 384 input features of down_proj: no 256-block fits, so Q4_K_S gives it Q4_K's fallback Q5_0 (Q4_K_M:
    # Q6_K on both layers of two, whose fallback is Q8_0) ...
    model = tiny_llama(intermediate=384)
    report = quantize_model(model, calibration(), method="rtn", gguf="q4_k_s", progress=False)
    assert report.gguf.types["model.layers.1.mlp.down_proj"] == "Q5_0"
    assert report.gguf.types["model.layers.1.mlp.up_proj"] == "Q4_K"
    plan = gguf_mixes.layer_types(
        "Q4_K_M", {"model.layers.1.mlp.down_proj": (256, 384)}, n_layer=2, n_head=4, n_head_kv=2
    )
    assert plan.types == {"model.layers.1.mlp.down_proj": "Q8_0"}
    assert {r.gguf for r in report} == set(report.gguf.types.values())
    # ... while asking for Q4_K there explicitly is an error that names the fallback.
    model = tiny_llama(intermediate=384)
    with pytest.raises(ValueError, match="as Q5_0 instead"):
        quantize_model(model, calibration(), method="gptq", gguf=lambda name: "Q4_K", progress=False)
    model = tiny_llama()
    names = [
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    choice = {name: ("Q6_K" if "down_proj" in name else "q5_1") for name in names}
    report = quantize_model(model, calibration(), method="gptq", gguf=choice, progress=False)
    assert report.gguf.mix is None and report.gguf.types["model.layers.0.mlp.down_proj"] == "Q6_K"
    assert report.gguf.types["model.layers.0.self_attn.q_proj"] == "Q5_1"
    written = save_gguf(model, tmp_path / "m.gguf", report, tokenizer=tiny_tokenizer())
    # Matrices the choice does not cover (embedding, output) default to Q8_0.
    assert written["token_embd.weight"] == written["output.weight"] == "Q8_0"
    del choice[names[3]]
    with pytest.raises(ValueError, match="gguf mapping has no type for layer.*o_proj"):
        quantize_model(tiny_llama(), calibration(), method="gptq", gguf=choice, progress=False)


@pytest.mark.parametrize(
    "gguf_arg,message",
    [
        ("Q4_X", "gguf must be a type mix"),
        (lambda name: "Q9_0", "gguf type for layer 'model.layers.0.self_attn.q_proj' must be one of"),
        (42, "gguf must be a type or mix name, a mapping or a callable"),
    ],
)
def test_bad_gguf_choice(gguf_arg, message):
    with pytest.raises(ValueError, match=message):
        quantize_model(tiny_llama(), calibration(), method="gptq", gguf=gguf_arg, progress=False)


def test_nan_weight_is_a_value_error():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN|finite"):
        quantize_model(model, calibration(), method="rtn", gguf="Q4_0", progress=False)


def test_save_gguf_bad_input(tmp_path):
    model, tok = tiny_llama(), tiny_tokenizer()
    plain = quantize_model(model, calibration(), method="rtn", bits=4, group_size=32, progress=False)
    with pytest.raises(ValueError, match="report must come from quantize_model"):
        save_gguf(model, tmp_path / "m.gguf", plain, tokenizer=tok)
    model = tiny_llama()
    report = quantize_model(model, calibration(), method="rtn", gguf="Q4_0", progress=False)
    with pytest.raises(ValueError, match="pass tokenizer="):
        save_gguf(model, tmp_path / "m.gguf", report)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj' is not the quantized weight"):
        save_gguf(model, tmp_path / "m.gguf", report, tokenizer=tok)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.tmp").exists()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=264))
    with pytest.raises(ValueError, match="llama-architecture models"):
        save_gguf(gpt2, tmp_path / "m.gguf", tokenizer=tok)
    with pytest.raises(ValueError, match="float_type must be"):
        save_gguf(tiny_llama(), tmp_path / "m.gguf", tokenizer=tok, float_type="Q4_0")


@pytest.mark.parametrize("float_type", ["F32", "F16"])
def test_float_file_and_tied_embeddings(tmp_path, float_type):
    model = tiny_llama(tied=True)
    written = save_gguf(model, tmp_path / "m.gguf", tokenizer=tiny_tokenizer(), float_type=float_type)
    assert "output.weight" not in written and written["token_embd.weight"] == float_type
    reader, tensors = read_back(tmp_path / "m.gguf")
    assert reader.fields["general.file_type"].contents() == {"F32": 0, "F16": 1}[float_type]
    for name, param in model.named_parameters():
        module, kind = name.rsplit(".", 1)
        ggml_type, data = hf_weight(model, f"{gguf_mixes.gguf_tensor_name(module)}.{kind}", tensors)
        want = param.detach().numpy()
        if param.dim() == 2 and float_type == "F16":
            want = want.astype(np.float16).astype(np.float32)
        assert ggml_type == (float_type if param.dim() == 2 else "F32")
        np.testing.assert_array_equal(data, want)


# ------------------------------------------------------------------------------------------ real SmolLM2

real = pytest.mark.skipif(
    not real_data_available(["smollm2-135m"], []), reason="needs QUANTEASE_REAL=1 or the cached SmolLM2 model"
)


@pytest.fixture(scope="module")
def smollm2():
    from quantease import models

    model, tok = models.load_causal_lm("smollm2-135m")
    template = models.source_gguf("smollm2-135m")
    return model, tok, template


@real
@pytest.mark.real_model
def test_smollm2_template_and_own_metadata(tmp_path, smollm2):
    """Our F32 file of SmolLM2 holds the shipped GGUF's tensors (permutation included) and metadata; the
    metadata written from the Hugging Face config and tokenizer equal the shipped file's too."""
    model, tok, template = smollm2
    save_gguf(model, tmp_path / "tpl.gguf", template=template)
    save_gguf(model, tmp_path / "own.gguf", tokenizer=tok)
    shipped = gguf.GGUFReader(str(template))
    ours = gguf.GGUFReader(str(tmp_path / "tpl.gguf"))
    own = gguf.GGUFReader(str(tmp_path / "own.gguf"))
    skip = ("GGUF.", "general.file_type", "general.quantization_version")
    for key, field in shipped.fields.items():
        if not key.startswith(skip):
            assert ours.fields[key].contents() == field.contents(), key
    for key in (
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "llama.rope.dimension_count",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ):
        assert own.fields[key].contents() == shipped.fields[key].contents(), key
    # The Hugging Face tokenizer rebuilt from the GGUF splits digits as GPT-2 does: written as such.
    assert own.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    ours_by_name = {t.name: t for t in ours.tensors}
    assert set(ours_by_name) == {t.name for t in shipped.tensors}
    for t in shipped.tensors:
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        np.testing.assert_array_equal(np.asarray(ours_by_name[t.name].data), ref, err_msg=t.name)


def test_resumed_run_writes_the_same_file(tmp_path):
    """Blocks kept in a checkpoint (GGUFBlocks stored as arrays, rebuilt on resume) pack to the same file."""
    first, second = tiny_llama(), tiny_llama()
    kw = dict(method="gptq", gguf="Q4_K_M", progress=False, checkpoint_dir=str(tmp_path / "ckpt"))
    report = quantize_model(first, calibration(), **kw)
    resumed = quantize_model(second, calibration(), **kw)
    assert resumed.resumed_blocks == 2
    save_gguf(first, tmp_path / "a.gguf", report, tokenizer=tiny_tokenizer())
    save_gguf(second, tmp_path / "b.gguf", resumed, tokenizer=tiny_tokenizer())
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    with pytest.raises(ValueError, match="belongs to a run with other settings \\(gguf:"):
        quantize_model(tiny_llama(), calibration(), **{**kw, "gguf": "Q4_0"})


def test_hessian_ridge_is_what_the_solver_sees():
    # gguf= runs solve on H + (cols / tokens) * mean(diag H) * I ("auto"); the record's loss stays the
    # calibration H's. Each layer's result is the solver's on exactly that H, from the layer's weight before.
    from quantease.pipeline import with_ridge

    model = tiny_llama()
    before = {n: m.weight.detach().numpy().copy() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    seen = []
    report = quantize_model(
        model, calibration(), method="gptq", gguf="Q4_0", progress=False, on_layer=lambda *a: seen.append(a)
    )
    assert len(seen) == 14
    for record, result, H in seen:
        W = before[record.name]
        assert record.n_samples == 128
        H_solve = with_ridge(H, W.shape[1] / record.n_samples)
        assert H_solve.dtype == H.dtype and not np.array_equal(H_solve, H)
        expected = quantease.gptq(W, H_solve, gguf=record.gguf)
        np.testing.assert_array_equal(result.weight, expected.weight)
        assert record.loss == pytest.approx(float(quantease.layer_loss(W, result.weight, H)), rel=1e-6)
    same = quantize_model(tiny_llama(), calibration(), method="gptq", gguf="Q4_0", progress=False, hessian_ridge="auto")
    raw = quantize_model(tiny_llama(), calibration(), method="gptq", gguf="Q4_0", progress=False, hessian_ridge=0)
    name = "model.layers.1.mlp.down_proj"
    np.testing.assert_array_equal(same.results[name].weight, report.results[name].weight)
    assert not np.array_equal(raw.results[name].weight, report.results[name].weight)


@pytest.mark.parametrize("bad", ["big", -0.5, float("nan"), True, [0.1]])
def test_bad_hessian_ridge(bad):
    with pytest.raises(ValueError, match="hessian_ridge"):
        quantize_model(tiny_llama(), calibration(), method="gptq", gguf="Q4_0", progress=False, hessian_ridge=bad)
