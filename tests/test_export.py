"""quantease.export: GPTQ-packed and quantease-format safetensors, checked with an independent unpacker."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

pytest.importorskip("safetensors")
from safetensors.numpy import load_file  # noqa: E402

from quantease import export  # noqa: E402
from quantease.packing import pack_axis0, pack_rows_bytes, unpack_axis0, unpack_rows_bytes, values_per_unit  # noqa: E402
from quantease.result import QuantResult, SparseOutliers  # noqa: E402
from reference.unpack import bytes_unpack_rows, gptq_qweight_codes, gptq_qzeros_values  # noqa: E402


def make_result(
    seed,
    n=64,
    k=256,
    bits=4,
    group_size=-1,
    sym=True,
    act_order=False,
    static_groups=False,
    fp16_scales=True,
    codebook=None,
    outliers=0.0,
    force_zero=True,
) -> QuantResult:
    """A hand-made QuantResult whose weight is exactly dense_weight() (no solver needed)."""
    rng = np.random.default_rng(seed)
    groups = 1 if group_size == -1 else math.ceil(k / group_size)
    gs = k if group_size == -1 else group_size
    perm = rng.permutation(k).astype(np.int64) if act_order else None
    if act_order and not static_groups:
        g_idx = (np.argsort(perm) // gs).astype(np.int32)
    else:
        g_idx = (np.arange(k) // gs).astype(np.int32)
    codes = rng.integers(0, 1 << bits, size=(n, k)).astype(np.uint8)
    scales = zeros = cb = None
    if codebook is None:
        scales = rng.uniform(1e-3, 5e-2, size=(n, groups)).astype(np.float32)
        if fp16_scales:
            scales = scales.astype(np.float16).astype(np.float32)
        if sym:
            zeros = np.full((n, groups), 1 << (bits - 1), np.float32)
        else:
            zeros = rng.integers(0, 1 << bits, size=(n, groups)).astype(np.float32)
            if force_zero:
                zeros[0, 0] = 0.0
    elif codebook == "row":
        cb = np.sort(rng.normal(size=(n, 1 << bits)), axis=1).astype(np.float32)
    else:
        cb = np.sort(rng.normal(size=(n, groups, 1 << bits)), axis=2).astype(np.float32)
    sparse = None
    if outliers:
        dense = np.where(rng.random((n, k)) < outliers, rng.normal(size=(n, k)), 0.0).astype(np.float32)
        sparse = SparseOutliers.from_dense(dense)
    r = QuantResult(
        weight=np.empty((n, k), np.float32),
        codes=codes,
        scales=scales,
        zeros=zeros,
        g_idx=g_idx,
        perm=perm,
        loss=1.25,
        damp=0.01,
        bits=bits,
        group_size=group_size,
        sym=sym,
        method="hand",
        seconds=0.5,
        outliers=sparse,
        codebook=cb,
        outlier_fraction=None if sparse is None else sparse.nnz / (n * k),
    )
    r.weight = r.dense_weight()
    return r


# ------------------------------------------------------------------------------------------------ packing


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("word_bits", [8, 32])
def test_pack_is_one_lsb_first_bitstream(bits, word_bits):
    rng = np.random.default_rng(bits * 100 + word_bits)
    per = values_per_unit(bits, word_bits)
    values = rng.integers(0, 1 << bits, size=(3 * per, 4))
    packed = pack_axis0(values, bits, word_bits)
    for col in range(4):
        stream = sum(int(v) << (bits * i) for i, v in enumerate(values[:, col]))
        words = [(stream >> (word_bits * w)) & ((1 << word_bits) - 1) for w in range(packed.shape[0])]
        assert [int(x) for x in packed[:, col]] == words
    np.testing.assert_array_equal(unpack_axis0(packed, bits, None, word_bits), values)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("k", [1, 3, 7, 16, 33])
def test_row_bytes_roundtrip_against_bitwise_reference(bits, k):
    codes = np.random.default_rng(k * 10 + bits).integers(0, 1 << bits, size=(5, k))
    packed = pack_rows_bytes(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (5, -(-k * bits // 8))
    np.testing.assert_array_equal(bytes_unpack_rows(packed, bits, k), codes)
    np.testing.assert_array_equal(unpack_rows_bytes(packed, bits, k), codes)


def test_pack_roundtrip_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.given(
        bits=st.integers(1, 8),
        word_bits=st.sampled_from([8, 32]),
        units=st.integers(1, 4),
        cols=st.integers(1, 5),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(bits, word_bits, units, cols, seed):
        per = values_per_unit(bits, word_bits)
        values = np.random.default_rng(seed).integers(0, 1 << bits, size=(units * per, cols))
        packed = pack_axis0(values, bits, word_bits)
        assert packed.shape == (units * per * bits // word_bits, cols)
        np.testing.assert_array_equal(unpack_axis0(packed, bits, None, word_bits), values)
        rows = pack_rows_bytes(values.T, bits)
        np.testing.assert_array_equal(unpack_rows_bytes(rows, bits, values.shape[0]), values.T)

    check()


def test_four_bit_bytes_hold_two_codes_low_nibble_first():
    packed = pack_rows_bytes(np.array([[1, 2, 3]]), 4)
    assert packed.tolist() == [[0x21, 0x03]]


def test_pack_rejects_out_of_range_and_bad_lengths():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 15\]"):
        pack_axis0(np.full((8, 1), 16), 4)
    with pytest.raises(ValueError, match="needs a multiple of 32 values"):
        pack_axis0(np.zeros((16, 1), np.uint8), 3)


# ------------------------------------------------------------------------------------------------ GPTQ

GPTQ_CASES = [
    (bits, gs, sym, act)
    for bits in (2, 3, 4, 8)
    for gs in (-1, 32, 128)
    for sym in (True, False)
    for act in (False, True)
]


@pytest.mark.parametrize("bits,group_size,sym,act_order", GPTQ_CASES)
def test_gptq_tensors_unpack_bit_for_bit(tmp_path, bits, group_size, sym, act_order):
    r = make_result(bits * 7 + group_size, bits=bits, group_size=group_size, sym=sym, act_order=act_order)
    qc = export.save_gptq(tmp_path, {"model.layers.0.mlp.up_proj": r}).quantization_config
    fmt = "gptq" if sym else "gptq_v2"
    assert qc["checkpoint_format"] == fmt
    t = load_file(str(tmp_path / "model.safetensors"))
    p = "model.layers.0.mlp.up_proj"
    n, k = r.shape
    groups = r.scales.shape[1]
    assert t[f"{p}.qweight"].dtype == np.int32 and t[f"{p}.qweight"].shape == (k * bits // 32, n)
    assert t[f"{p}.qzeros"].dtype == np.int32 and t[f"{p}.qzeros"].shape == (groups, n * bits // 32)
    assert t[f"{p}.scales"].dtype == np.float16 and t[f"{p}.scales"].shape == (groups, n)
    assert t[f"{p}.g_idx"].dtype == np.int32 and t[f"{p}.g_idx"].shape == (k,)
    np.testing.assert_array_equal(gptq_qweight_codes(t[f"{p}.qweight"], bits), r.codes)
    stored = gptq_qzeros_values(t[f"{p}.qzeros"], bits)
    np.testing.assert_array_equal(stored + (1 if fmt == "gptq" else 0), r.zeros)
    np.testing.assert_array_equal(t[f"{p}.scales"].astype(np.float32).T, r.scales)
    np.testing.assert_array_equal(t[f"{p}.g_idx"], r.g_idx)
    # The deployed weight (fp16 scales widened to fp32) is the solver's weight, bit for bit.
    np.testing.assert_array_equal(export.load_gptq_layer(t, p, checkpoint_format=fmt), r.weight)
    np.testing.assert_array_equal(export.unpack_codes(t[f"{p}.qweight"], bits), r.codes)
    loaded, bias = export.load_gptq_results(tmp_path)[p]
    assert bias is None and loaded.bits == bits and loaded.sym == sym
    np.testing.assert_array_equal(loaded.codes, r.codes)
    np.testing.assert_array_equal(loaded.weight, r.weight)


@pytest.mark.parametrize("bits,word", [(4, 0x77777777), (8, 0x7F7F7F7F), (2, 0x55555555)])
def test_symmetric_v1_qzeros_constants(tmp_path, bits, word):
    r = make_result(1, bits=bits, group_size=64, sym=True)
    export.save_gptq(tmp_path, {"l": r})
    qz = load_file(str(tmp_path / "model.safetensors"))["l.qzeros"]
    assert qz.shape == (4, 64 * bits // 32)
    assert np.all(qz.view(np.uint32) == word)


def test_symmetric_v1_three_bit_qzeros_are_the_spec_words(tmp_path):
    # z = 4 stores 3 = 0b011 in every 3-bit slot; 32 slots fill 3 words.
    stream = sum(3 << (3 * i) for i in range(32))
    words = [(stream >> (32 * w)) & 0xFFFFFFFF for w in range(3)]
    export.save_gptq(tmp_path, {"l": make_result(2, bits=3, group_size=128, sym=True)})
    qz = load_file(str(tmp_path / "model.safetensors"))["l.qzeros"].view(np.uint32)
    assert qz.shape == (2, 6)
    assert qz[0].tolist() == words * 2
    assert words == [0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D]


def test_v1_refuses_zero_point_zero(tmp_path):
    r = make_result(3, bits=4, group_size=32, sym=False)
    with pytest.raises(ValueError, match=r"'gptq' \(v1\) format stores z - 1 and cannot hold a zero point of 0"):
        export.save_gptq(tmp_path, {"l": r}, checkpoint_format="gptq")
    assert not (tmp_path / "model.safetensors").exists()


def test_v1_accepts_asymmetric_grid_without_zero(tmp_path):
    r = make_result(4, bits=4, group_size=32, sym=False, force_zero=False)
    r.zeros = np.maximum(r.zeros, 1.0)
    r.weight = r.grid_weight()
    qc = export.save_gptq(tmp_path, {"l": r}, checkpoint_format="gptq").quantization_config
    assert qc["checkpoint_format"] == "gptq" and qc["sym"] is False
    np.testing.assert_array_equal(export.load_gptq(tmp_path)["l"], r.weight)


def test_desc_act_and_static_groups_are_truthful(tmp_path):
    plain = export.save_gptq(tmp_path / "a", {"l": make_result(5, group_size=32)}).quantization_config
    assert plain["desc_act"] is False and plain["static_groups"] is False
    dynamic = export.save_gptq(tmp_path / "b", {"l": make_result(5, group_size=32, act_order=True)}).quantization_config
    assert dynamic["desc_act"] is True and dynamic["static_groups"] is False
    static = export.save_gptq(
        tmp_path / "c", {"l": make_result(5, group_size=32, act_order=True, static_groups=True)}
    ).quantization_config
    assert static["desc_act"] is True and static["static_groups"] is True
    r = make_result(5, group_size=32)
    r.perm = np.arange(r.shape[1])
    assert export.save_gptq(tmp_path / "d", {"l": r}).quantization_config["desc_act"] is False


def test_act_order_g_idx_is_non_monotonic_on_disk(tmp_path):
    r = make_result(6, group_size=32, act_order=True)
    export.save_gptq(tmp_path, {"l": r})
    g = load_file(str(tmp_path / "model.safetensors"))["l.g_idx"]
    assert np.any(np.diff(g) < 0)
    np.testing.assert_array_equal(g, np.argsort(r.perm) // 32)


def test_config_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    r = make_result(7, group_size=128)
    r.damp = 0.05
    qc = export.save_gptq(tmp_path, {"l": r}).quantization_config
    assert qc == {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "desc_act": False,
        "sym": True,
        "damp_percent": 0.05,
        "static_groups": False,
        "true_sequential": True,
        "checkpoint_format": "gptq",
        "meta": {"quantizer": ["quantease"], "methods": ["hand"]},
    }
    assert json.loads((tmp_path / "quantize_config.json").read_text()) == qc
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["quantization_config"] == qc
    other = tmp_path / "given"
    export.save_gptq(other, {"l": r}, config={"model_type": "gpt2"}, quantization_extra={"true_sequential": False})
    cfg = json.loads((other / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["quantization_config"]["true_sequential"] is False
    per_channel = export.save_gptq(tmp_path / "pc", {"l": make_result(7)}).quantization_config
    assert per_channel["group_size"] == -1


def test_passthrough_tensors_and_bias(tmp_path):
    r = make_result(8, group_size=32)
    n, k = r.shape
    bias = np.linspace(-1, 1, n).astype(np.float32)
    extra = {
        "emb.weight": np.ones((10, 4), np.float32),
        "norm.weight": np.ones(4, np.float16),
        "l.weight": np.zeros((n, k), np.float32),
        "l.bias": bias,
        "step": np.arange(3, dtype=np.int64),
    }
    export.save_gptq(tmp_path, {"l": r}, extra_tensors=extra, passthrough_dtype=None)
    t = load_file(str(tmp_path / "model.safetensors"))
    assert "l.weight" not in t
    assert t["l.bias"].dtype == np.float16
    np.testing.assert_array_equal(t["l.bias"], bias.astype(np.float16))
    assert t["emb.weight"].dtype == np.float32 and t["norm.weight"].dtype == np.float16
    assert t["step"].dtype == np.int64
    # The default: floating pass-through tensors in the serving dtype (float16 without a config saying bfloat16).
    export.save_gptq(tmp_path / "h", {"l": (r, bias)}, extra_tensors=extra)
    t = load_file(str(tmp_path / "h" / "model.safetensors"))
    assert t["emb.weight"].dtype == np.float16 and t["step"].dtype == np.int64
    _, loaded_bias = export.load_gptq_results(tmp_path / "h")["l"]
    np.testing.assert_array_equal(loaded_bias, bias.astype(np.float16))


def test_passthrough_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    r = make_result(9, group_size=32)
    emb = torch.arange(40, dtype=torch.bfloat16).reshape(10, 4)
    # Without a config saying the embeddings are tied, shared storage and views are written as separate copies.
    extra = {"emb.weight": emb, "lm_head.weight": emb, "first_rows": emb[:2]}
    export.save_gptq(tmp_path, {"l": (r, torch.zeros(r.shape[0]))}, extra_tensors=extra, passthrough_dtype=None)
    from safetensors.torch import load_file as load_pt

    t = load_pt(str(tmp_path / "model.safetensors"))
    assert t["emb.weight"].dtype == torch.bfloat16
    assert torch.equal(t["lm_head.weight"], emb) and torch.equal(t["first_rows"], emb[:2])
    assert t["l.qweight"].dtype == torch.int32 and t["l.bias"].dtype == torch.float16


def test_serving_dtype_tied_embeddings_and_size_report(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_pt

    r = make_result(12, group_size=32)
    n, k = r.shape
    emb = torch.randn(16, k)
    extra = {"model.embed.weight": emb, "model.norm.weight": torch.ones(k), "lm_head.weight": emb, "l.weight": None}
    config = {"model_type": "llama", "vocab_size": 16, "tie_word_embeddings": True, "dtype": "bfloat16"}
    written = export.save_gptq(tmp_path, {"l": r}, extra_tensors=extra, config=config)
    t = load_pt(str(tmp_path / "model.safetensors"))
    # The tied output embedding is written once; the pass-through tensors are in the config's dtype.
    assert "lm_head.weight" not in t and t["model.embed.weight"].dtype == torch.bfloat16
    assert (
        torch.equal(t["model.embed.weight"], emb.to(torch.bfloat16)) and t["model.norm.weight"].dtype == torch.bfloat16
    )
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert written.file_bytes == (tmp_path / "model.safetensors").stat().st_size
    # float16 model: the layer's N x K weight, the embedding once, the norm.
    assert written.fp16_bytes == 2 * (n * k + 16 * k + k)
    assert written.size_ratio == written.file_bytes / written.fp16_bytes
    # Untied (or no config): both embeddings, float16 for a float32 model.
    untied = dict(config, tie_word_embeddings=False, dtype="float32")
    written = export.save_gptq(tmp_path / "u", {"l": r}, extra_tensors=extra, config=untied)
    t = load_pt(str(tmp_path / "u" / "model.safetensors"))
    assert torch.equal(t["lm_head.weight"], emb.half()) and t["model.embed.weight"].dtype == torch.float16
    assert json.loads((tmp_path / "u" / "config.json").read_text())["dtype"] == "float16"
    assert written.fp16_bytes == 2 * (n * k + 2 * 16 * k + k)


def test_passthrough_overflowing_float16_is_an_error(tmp_path):
    extra = {"big": np.array([1e6, 1.0], np.float32)}
    with pytest.raises(ValueError, match=r"pass-through tensor 'big' has finite values that overflow float16"):
        export.save_gptq(tmp_path, {"l": make_result(13)}, extra_tensors=extra)
    export.save_gptq(tmp_path, {"l": make_result(13)}, extra_tensors=extra, passthrough_dtype="float32")
    with pytest.raises(ValueError, match="passthrough_dtype must be"):
        export.save_gptq(tmp_path, {"l": make_result(13)}, passthrough_dtype="int8")


def _consumer_warnings(tmp_path, layers, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = export.save_gptq(tmp_path, layers, **kw)
    messages = [str(w.message) for w in caught if issubclass(w.category, export.GPTQConsumerWarning)]
    assert len(messages) == len(written.consumer_warnings)
    for consumer, why in written.consumer_warnings.items():
        assert any(m == f"{export.GPTQ_CONSUMERS[consumer]}: {why}" for m in messages)
    return written


def test_consumer_warnings_and_kernel_steering(tmp_path):
    # Symmetric 4-bit runs on every consumer's default kernel: no warning, no backend.
    sym = _consumer_warnings(tmp_path / "s", {"l": make_result(14, group_size=32)})
    assert sym.consumer_warnings == {} and "backend" not in sym.quantization_config
    # Asymmetric 4-bit in the fused kernel's group sizes: transformers is steered, GPTQModel warned about.
    asym = _consumer_warnings(tmp_path / "a", {"l": make_result(14, group_size=32, sym=False)})
    assert asym.quantization_config["backend"] == "gptq_torch"
    assert set(asym.consumer_warnings) == {"gptqmodel"}
    assert "TorchFusedQuantLinear" in asym.consumer_warnings["gptqmodel"]
    # Other bit widths or group sizes run the torch kernel everywhere.
    for name, r in {
        "b3": make_result(14, bits=3, group_size=32, sym=False),
        "g256": make_result(14, group_size=256, sym=False),
    }.items():
        other = _consumer_warnings(tmp_path / name, {"l": r})
        assert other.consumer_warnings == {} and "backend" not in other.quantization_config
    # A group size no CPU kernel takes: both consumers refuse it.
    odd = _consumer_warnings(tmp_path / "o", {"l": make_result(14, k=192, group_size=48)})
    assert set(odd.consumer_warnings) == {"gptqmodel", "transformers"}
    assert "group_size=48" in odd.consumer_warnings["transformers"]


def test_asymmetric_v1_warns_that_gptqmodel_refuses_it(tmp_path):
    r = make_result(4, bits=4, group_size=32, sym=False, force_zero=False)
    r.zeros = np.maximum(r.zeros, 1.0)
    r.weight = r.grid_weight()
    written = _consumer_warnings(tmp_path, {"l": r}, checkpoint_format="gptq")
    assert "refuses asymmetric checkpoints in the v1 'gptq' format" in written.consumer_warnings["gptqmodel"]


def test_sym_means_zero_points_at_the_midpoint(tmp_path):
    # EasyQuant's symmetric grid puts the zero point at 2^(b-1) - 1: loaders' sym=True (and the fused kernel's
    # q - 8) would be wrong for it, so it is exported as an asymmetric grid in the v2 format.
    r = make_result(15, group_size=32)
    r.zeros = r.zeros - 1
    r.weight = r.grid_weight()
    assert r.sym and np.all(r.zeros == 7)
    written = _consumer_warnings(tmp_path, {"l": r})
    qc = written.quantization_config
    assert qc["sym"] is False and qc["checkpoint_format"] == "gptq_v2" and "gptqmodel" in written.consumer_warnings
    np.testing.assert_array_equal(export.load_gptq(tmp_path)["l"], r.weight)


def test_non_fp16_scales_warn_with_the_deviation_or_raise_when_strict(tmp_path):
    r = make_result(10, group_size=32, fp16_scales=False)
    dev = export.gptq_deviation(r)
    assert 0 < dev < 1e-3
    with pytest.warns(UserWarning, match=r"float16 scales make the exported weights differ"):
        export.save_gptq(tmp_path / "w", {"l": r})
    diff = np.abs(export.load_gptq(tmp_path / "w")["l"] - r.weight).max()
    assert diff == pytest.approx(dev)
    with pytest.raises(ValueError, match="largest: "):
        export.save_gptq(tmp_path / "s", {"l": r}, strict=True)
    exact = make_result(10, group_size=32)
    assert export.gptq_deviation(exact) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export.save_gptq(tmp_path / "e", {"l": exact}, strict=True)


def test_gptq_input_errors(tmp_path):
    with pytest.raises(ValueError, match="non-uniform codebook cannot be written in the GPTQ format"):
        export.save_gptq(tmp_path, {"l": make_result(11, codebook="row")})
    with pytest.raises(ValueError, match="sparse outliers cannot be written in the GPTQ format"):
        export.save_gptq(tmp_path, {"l": make_result(11, outliers=0.01)})
    with pytest.raises(ValueError, match=r"the GPTQ format takes bits in \(2, 3, 4, 8\), got 5"):
        export.save_gptq(tmp_path, {"l": make_result(11, bits=5)})
    with pytest.raises(ValueError, match=r"divisible by 32, got \(64, 240\)"):
        export.save_gptq(tmp_path, {"l": make_result(11, bits=3, k=240)})
    with pytest.raises(ValueError, match=r"must share one bits, got \[3, 4\]"):
        export.save_gptq(tmp_path, {"a": make_result(11, bits=4), "b": make_result(11, bits=3)})
    with pytest.raises(ValueError, match="must be 'gptq' or 'gptq_v2'"):
        export.save_gptq(tmp_path, {"l": make_result(11)}, checkpoint_format="v3")
    bad = make_result(11, group_size=32)
    bad.zeros = bad.zeros + 0.5
    with pytest.raises(ValueError, match=r"zero points must be integers in \[0, 15\]"):
        export.save_gptq(tmp_path, {"l": bad})
    with pytest.raises(ValueError, match="layers is empty"):
        export.save_gptq(tmp_path, {})
    with pytest.raises(ValueError, match="bias must have 64 entries"):
        export.save_gptq(tmp_path, {"l": (make_result(11), np.zeros(3))})


def test_several_layers_mixed_sym_default_to_v2(tmp_path):
    layers = {f"blocks.{i}.fc": make_result(20 + i, group_size=32, sym=(i % 2 == 0)) for i in range(4)}
    qc = export.save_gptq(tmp_path / "m.safetensors", layers).quantization_config
    assert qc["checkpoint_format"] == "gptq_v2" and qc["sym"] is False
    loaded = export.load_gptq(tmp_path / "m.safetensors")
    assert sorted(loaded) == sorted(layers)
    for name, r in layers.items():
        np.testing.assert_array_equal(loaded[name], r.weight)


# ------------------------------------------------------------------------------------------------ quantease format

QE_CASES = [
    dict(bits=4, group_size=-1),
    dict(bits=3, group_size=32, sym=False, act_order=True),
    dict(bits=2, group_size=64, sym=False, outliers=0.01),
    dict(bits=5, group_size=-1, sym=False, k=100),
    dict(bits=8, group_size=32, outliers=0.002, fp16_scales=False),
    dict(bits=1, group_size=-1, sym=False),
    dict(bits=6, group_size=-1, sym=False, k=37, n=9),
    dict(bits=4, codebook="row"),
    dict(bits=3, codebook="group", group_size=32, k=100, outliers=0.005),
    dict(bits=7, codebook="row", outliers=0.003, act_order=True),
]


@pytest.mark.parametrize(
    "seed,case",
    list(enumerate(QE_CASES)),
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else str(c),
)
def test_quantease_format_rebuilds_the_weight_exactly(tmp_path, seed, case):
    r = make_result(100 + seed, **case)
    path = tmp_path / "q.safetensors"
    devs = export.save_quantease(path, {"layer": (r, np.arange(r.shape[0], dtype=np.float32))})
    assert devs == {"layer": 0.0}
    t = load_file(str(path))
    np.testing.assert_array_equal(bytes_unpack_rows(t["layer.codes"], r.bits, r.shape[1]), r.codes)
    np.testing.assert_array_equal(export.load_quantease(path)["layer"], r.weight)
    loaded, bias = export.load_quantease_results(path)["layer"]
    np.testing.assert_array_equal(bias, np.arange(r.shape[0], dtype=np.float32))
    np.testing.assert_array_equal(loaded.codes, r.codes)
    np.testing.assert_array_equal(loaded.g_idx, r.g_idx)
    assert (loaded.bits, loaded.group_size, loaded.sym, loaded.method, loaded.loss, loaded.damp) == (
        r.bits,
        r.group_size,
        r.sym,
        r.method,
        r.loss,
        r.damp,
    )
    if r.perm is None:
        assert loaded.perm is None
    else:
        np.testing.assert_array_equal(loaded.perm, r.perm)
    if r.outliers is not None:
        assert loaded.outliers.nnz == r.outliers.nnz
        np.testing.assert_array_equal(loaded.outliers.to_dense(), r.outliers.to_dense())
    # Round trip of the round trip.
    export.save_quantease(tmp_path / "again.safetensors", {"layer": (loaded, bias)})
    np.testing.assert_array_equal(export.load_quantease(tmp_path / "again.safetensors")["layer"], r.weight)


def test_quantease_metadata_and_auto_dtype(tmp_path):
    from safetensors import safe_open

    exact = make_result(30, group_size=32)
    inexact = make_result(31, group_size=32, fp16_scales=False)
    path = tmp_path / "q.safetensors"
    export.save_quantease(path, {"a": exact, "b": inexact})
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        assert f.get_tensor("a.scales").dtype == np.float16
        assert f.get_tensor("b.scales").dtype == np.float32
    assert meta["quantease_format"] == "1" and meta["format"] == "pt"
    layers = json.loads(meta["quantease_layers"])
    assert layers["a"]["shape"] == [64, 256] and layers["a"]["grid"] == "affine" and layers["a"]["bits"] == 4
    loaded = export.load_quantease(path)
    np.testing.assert_array_equal(loaded["b"], inexact.weight)


def test_quantease_float16_rounding_warns_or_raises(tmp_path):
    r = make_result(32, codebook="row", outliers=0.01)
    with pytest.warns(UserWarning, match="rebuilt with an error"):
        devs = export.save_quantease(tmp_path / "h.safetensors", {"l": r}, dtype="float16")
    assert 0 < devs["l"] < 1e-2
    with pytest.raises(ValueError, match="rebuilt with an error"):
        export.save_quantease(tmp_path / "s.safetensors", {"l": r}, dtype="float16", strict=True)
    export.save_quantease(tmp_path / "f.safetensors", {"l": r}, dtype="float32")
    np.testing.assert_array_equal(export.load_quantease(tmp_path / "f.safetensors")["l"], r.weight)


def test_quantease_state_dict_and_version_check(tmp_path):
    r = make_result(33, bits=3, group_size=32, outliers=0.01)
    extra = {"emb.weight": np.full((3, 2), 2.0, np.float32), "l.weight": np.zeros(r.shape, np.float32)}
    export.save_quantease(tmp_path / "q.safetensors", {"l": r}, extra_tensors=extra)
    sd = export.load_quantease_state_dict(tmp_path / "q.safetensors")
    assert sorted(sd) == ["emb.weight", "l.weight"]
    np.testing.assert_array_equal(sd["l.weight"], r.weight)
    np.testing.assert_array_equal(sd["emb.weight"], extra["emb.weight"])
    torch = pytest.importorskip("torch")
    sd_pt = export.load_quantease_state_dict(tmp_path / "q.safetensors", framework="pt")
    assert isinstance(sd_pt["l.weight"], torch.Tensor)
    np.testing.assert_array_equal(sd_pt["l.weight"].numpy(), r.weight)
    # A GPTQ file is not a quantease file.
    export.save_gptq(tmp_path / "g", {"l": make_result(34)})
    with pytest.raises(ValueError, match="not a quantease-format file"):
        export.load_quantease(tmp_path / "g" / "model.safetensors")


# ------------------------------------------------------------------------------------------------ real solvers


def _solver(name):
    import quantease

    fn = getattr(quantease, name, None)
    if fn is None:
        pytest.skip(f"quantease.{name} is not built yet")
    return fn


@pytest.mark.parametrize("bits,group_size,sym", [(4, 32, True), (3, -1, False), (2, 64, False), (8, 32, True)])
def test_real_rtn_result_round_trips(tmp_path, bits, group_size, sym):
    rtn = _solver("rtn")
    w = np.random.default_rng(bits).normal(size=(64, 128)).astype(np.float32)
    r = rtn(w, bits=bits, group_size=group_size, sym=sym)
    export.save_quantease(tmp_path / "q.safetensors", {"l": r}, dtype="float32")
    np.testing.assert_array_equal(export.load_quantease(tmp_path / "q.safetensors")["l"], r.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qc = export.save_gptq(tmp_path / "g", {"l": r}).quantization_config
    t = load_file(str(tmp_path / "g" / "model.safetensors"))
    np.testing.assert_array_equal(gptq_qweight_codes(t["l.qweight"], bits), r.codes)
    dequant = export.load_gptq(tmp_path / "g")["l"]
    assert np.abs(dequant - r.weight).max() == pytest.approx(export.gptq_deviation(r))
    assert qc["checkpoint_format"] == ("gptq" if sym else "gptq_v2")


def test_real_gptq_act_order_result_round_trips(tmp_path):
    gptq = _solver("gptq")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 128)).astype(np.float32)
    x = rng.normal(size=(512, 128)).astype(np.float32) * rng.uniform(0.1, 3, size=128).astype(np.float32)
    h = (2.0 / len(x)) * (x.T.astype(np.float64) @ x).astype(np.float32)
    r = gptq(w, h, bits=4, group_size=32, sym=True, act_order=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qc = export.save_gptq(tmp_path, {"l": r}).quantization_config
    assert qc["desc_act"] is True
    t = load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(gptq_qweight_codes(t["l.qweight"], 4), r.codes)
    np.testing.assert_array_equal(t["l.g_idx"], r.g_idx)
    assert np.abs(export.load_gptq(tmp_path)["l"] - r.weight).max() == pytest.approx(export.gptq_deviation(r))


# GPTQ checkpoints in GPTQModel and transformers + optimum: tests/test_consumers.py.
