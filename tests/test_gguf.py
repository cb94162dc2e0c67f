"""llama.cpp's GGUF block types: packing, unpacking and the solvers' gguf= option, against the `gguf` package
(llama.cpp's reference in NumPy: every type's dequantizer, the legacy types' quantizers)."""

import numpy as np
import pytest

import quantease
from quantease import gguf as qg

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402

from problems import dead_columns, llm_like, rank_deficient  # noqa: E402

ALL_TYPES = list(qg.TYPES)
LEGACY_REFERENCE = [
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
]  # what gguf.quants.quantize implements


def reference_dequantize(raw, name):
    return gguf.quants.dequantize(raw, GGMLQuantizationType[name])


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(
        np.asarray(a, np.float32).view(np.uint32),
        np.asarray(b, np.float32).view(np.uint32),
    )


def awkward_weights(rows=12, cols=512, seed=0):
    """Heavy-tailed rows at different scales, with all-zero, constant, one-sign and tied blocks."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(4, size=(rows, cols)) * np.exp(rng.normal(0, 2, size=(rows, 1))) * 0.02
    W[1, :] = 0.0
    W[2, 32:64] = 0.0
    W[3, :256] = 0.5
    W[4] = np.abs(W[4])
    W[5] = -np.abs(W[5])
    W[6, :32] = np.array([1.0, -1.0] * 16)
    return W.astype(np.float32)


@pytest.mark.parametrize("name", ALL_TYPES)
def test_types_table_matches_gguf_package(name):
    t = qg.TYPES[name]
    block, size = gguf.constants.GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    assert (t.block_size, t.type_size) == (block, size)
    assert t.bits_per_weight == 8 * size / block


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("imatrix", [False, True])
def test_rtn_dequantizes_bit_for_bit(name, imatrix):
    W = awkward_weights()
    importance = np.random.default_rng(1).random(W.shape[1]) if imatrix else None
    W0, importance0 = W.copy(), None if importance is None else importance.copy()
    r = quantease.rtn(W, gguf=name, imatrix=importance)
    assert np.array_equal(W, W0) and (importance is None or np.array_equal(importance, importance0))
    raw = qg.pack(r)
    assert raw.dtype == np.uint8 and raw.shape == (
        W.shape[0],
        W.shape[1] // qg.TYPES[name].block_size * qg.TYPES[name].type_size,
    )
    assert same_bits(reference_dequantize(raw, name), r.weight)
    assert same_bits(r.grid_weight(), r.weight)
    assert int(r.codes.max()) < 1 << qg.TYPES[name].bits
    assert r.gguf.type == name and r.method == "rtn"


@pytest.mark.parametrize("name", ALL_TYPES)
def test_unpack_equals_gguf_dequantize_on_arbitrary_bytes(name):
    """Random bytes (finite fp16 scales) decode exactly as the gguf package decodes them, and pack them back."""
    t = qg.TYPES[name]
    rng = np.random.default_rng(2)
    shape = (3, 2 * t.block_size)
    raw = rng.integers(0, 256, size=(shape[0], shape[1] // t.block_size * t.type_size), dtype=np.uint8)
    b = raw.reshape(-1, t.type_size)
    # keep every fp16 scale finite and moderate: exponent bits cleared to a fixed pattern
    fp16_at = {"Q2_K": [80, 82], "Q3_K": [108], "Q6_K": [208]}.get(name, [0, 2] if t.has_min else [0])
    for at in fp16_at:
        b[:, at + 1] = (b[:, at + 1] & 0x83) | 0x30
    assert same_bits(qg.unpack(raw, name, shape), reference_dequantize(raw, name))
    codes, blocks = qg.unpack_blocks(raw, name, shape)
    repacked = qg.pack(
        quantease.QuantResult(
            weight=qg.dequantize(blocks, codes),
            codes=codes,
            scales=None,
            zeros=None,
            g_idx=np.zeros(shape[1], np.int32),
            perm=None,
            loss=None,
            damp=None,
            bits=t.bits,
            group_size=t.sub_block,
            sym=False,
            method="rtn",
            seconds=0.0,
            gguf=blocks,
        )
    )
    if name == "Q3_K":  # the 6-bit sub-scales own all 12 bytes; hmask/qs bits are all meaningful
        assert np.array_equal(repacked, raw)
    else:
        assert same_bits(reference_dequantize(repacked, name), reference_dequantize(raw, name))


@pytest.mark.parametrize("name", LEGACY_REFERENCE)
def test_rtn_is_llama_cpp_reference_quantizer_byte_for_byte(name):
    for seed in range(3):
        W = awkward_weights(seed=seed)
        expected = gguf.quants.quantize(W, GGMLQuantizationType[name])
        assert np.array_equal(qg.pack(quantease.rtn(W, gguf=name)), expected)


def test_type_names_are_case_insensitive():
    W = awkward_weights()
    a, b = quantease.rtn(W, gguf="q4_k"), quantease.rtn(W, gguf="Q4_K")
    assert np.array_equal(qg.pack(a), qg.pack(b))


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_on_gguf_grids_is_exact_and_beats_llama_cpp(name, act_order):
    p = llm_like(rows=32, cols=512, seed=3)
    W0, H0 = p.W.copy(), p.H.copy()
    r = quantease.gptq(p.W, p.H, gguf=name, act_order=act_order)
    assert np.array_equal(p.W, W0) and np.array_equal(p.H, H0)
    assert same_bits(reference_dequantize(qg.pack(r), name), r.weight)
    assert int(r.codes.max()) < 1 << qg.TYPES[name].bits
    assert r.loss == pytest.approx(quantease.layer_loss(p.W, r.weight, p.H))
    llama = quantease.rtn(p.W, gguf=name, imatrix=np.diag(p.H))
    assert r.loss < quantease.layer_loss(p.W, llama.weight, p.H)
    assert (r.perm is not None) == act_order


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("init", ["gptq", "w"])
def test_quantease_on_gguf_grids_is_exact_and_never_worse_than_its_start(name, init):
    p = llm_like(rows=32, cols=512, seed=4)
    W0 = p.W.copy()
    r = quantease.quantease(p.W, p.H, gguf=name, init=init, iters=9)
    assert np.array_equal(p.W, W0)
    assert same_bits(reference_dequantize(qg.pack(r), name), r.weight)
    assert r.loss == pytest.approx(quantease.layer_loss(p.W, r.weight, p.H))
    llama = quantease.rtn(p.W, gguf=name, imatrix=np.diag(p.H))
    assert r.loss < quantease.layer_loss(p.W, llama.weight, p.H)
    if init == "gptq":  # the sweeps start on GPTQ's codes, so they can only improve on them (here they do)
        assert r.loss < quantease.gptq(p.W, p.H, gguf=name, act_order=True).loss


def test_core_start_codes_are_checked():
    from quantease import _core

    p = llm_like(rows=4, cols=64, seed=5)
    book = np.sort(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32), axis=-1)
    args = dict(bits=4, group_size=-1, sym=False, act_order=True, iters=2, relaxed=True, tol=0.0, outliers=0.0)
    args.update(outlier_structure="unstructured", outlier_step=1.0, block_size=128)
    codes = np.zeros((4, 64), np.uint8)
    out = _core.quantease(p.W, p.H, init="w", codebook=book, start_codes=codes, **args)
    start_loss = quantease.layer_loss(p.W, np.repeat(book[:, :1], 64, axis=1), p.H)
    assert quantease.layer_loss(p.W, out["weight"], p.H) <= start_loss
    with pytest.raises(ValueError, match="start_codes needs a codebook"):
        _core.quantease(p.W, p.H, init="w", start_codes=codes, **args)
    with pytest.raises(ValueError, match="start_codes needs a codebook and init='w'"):
        _core.quantease(p.W, p.H, init="rtn", codebook=book, start_codes=codes, **args)
    with pytest.raises(ValueError, match=r"start_codes must have W's shape \(4, 64\)"):
        _core.quantease(p.W, p.H, init="w", codebook=book, start_codes=codes[:, :32].copy(), **args)
    with pytest.raises(ValueError, match="start_codes must be below 2\\^bits = 16, found 16"):
        _core.quantease(p.W, p.H, init="w", codebook=book, start_codes=codes + 16, **args)
    with pytest.raises(ValueError, match="uint8"):
        _core.quantease(p.W, p.H, init="w", codebook=book, start_codes=codes.astype(np.int64), **args)


@pytest.mark.parametrize(
    "name, cols, fallback",
    [
        ("Q4_K", 544, "Q5_0"),
        ("Q3_K", 288, "Q4_0"),
        ("Q6_K", 320, "Q8_0"),
        ("Q5_K", 96, "Q5_1"),
        ("Q4_0", 48, "F16"),
    ],
)
def test_rows_not_a_multiple_of_the_block_name_llama_cpp_fallback(name, cols, fallback):
    W = np.ones((4, cols), np.float32)
    with pytest.raises(ValueError, match=f"llama.cpp quantizes such a tensor as {fallback} instead"):
        quantease.rtn(W, gguf=name)
    with pytest.raises(ValueError, match=f"as {fallback} instead"):
        quantease.gptq(W, np.eye(cols, dtype=np.float32), gguf=name)


def test_bad_input_is_a_value_error():
    W = awkward_weights(rows=8, cols=256)
    H = np.eye(256, dtype=np.float32)
    with pytest.raises(ValueError, match=r"gguf must be one of Q4_0, .*, got 'Q7_K'"):
        quantease.rtn(W, gguf="Q7_K")
    with pytest.raises(ValueError, match="gguf must be one of"):
        quantease.quantease(W, H, gguf=4)
    bad = W.copy()
    bad[2, 7] = np.nan
    with pytest.raises(ValueError, match=r"W contains NaN or Inf \(first at row 2, column 7\)"):
        quantease.gptq(bad, H, gguf="Q4_K")
    with pytest.raises(ValueError, match="bits=3 cannot be combined with gguf='Q4_K'"):
        quantease.gptq(W, H, gguf="Q4_K", bits=3)
    with pytest.raises(ValueError, match="group_size=128 cannot be combined with gguf='Q4_0'"):
        quantease.rtn(W, gguf="Q4_0", group_size=128)
    with pytest.raises(ValueError, match="refit=2 cannot be combined"):
        quantease.quantease(W, H, gguf="Q4_K", refit=2)
    with pytest.raises(ValueError, match="init='leanquant' cannot be combined with gguf='Q4_K'"):
        quantease.quantease(W, H, gguf="Q4_K", init="leanquant")
    with pytest.raises(ValueError, match="imatrix needs gguf="):
        quantease.rtn(W, imatrix=np.ones(256))
    with pytest.raises(ValueError, match="imatrix must be a 1-D real array of 256 values"):
        quantease.rtn(W, gguf="Q4_K", imatrix=np.ones(255))
    with pytest.raises(ValueError, match="imatrix must be finite and >= 0"):
        quantease.rtn(W, gguf="Q4_K", imatrix=-np.ones(256))
    with pytest.raises(ValueError, match="too large for Q4_0's float16 block scales"):
        quantease.rtn(np.full((2, 32), 1e9, np.float32), gguf="Q4_0")
    with pytest.raises(ValueError, match="too large for Q4_K's float16 block scales"):
        quantease.quantease(np.full((2, 256), 1e9, np.float32), H, gguf="Q4_K")
    with pytest.raises(ValueError, match="pack needs a result of a solver called with gguf="):
        qg.pack(quantease.rtn(W))
    with pytest.raises(ValueError, match="raw must be uint8 with 288 bytes"):
        qg.unpack(np.zeros(287, np.uint8), "Q4_K", (2, 256))


@pytest.mark.parametrize("name", ALL_TYPES)
def test_refined_grids_never_raise_the_weighted_error_of_any_row(name):
    """Our refinement after llama.cpp's search only keeps changes that lower sum_c imatrix_c (w_c - q_c)^2."""
    from quantease import _core, _gguf_solvers

    W = awkward_weights(seed=5)
    importance = np.random.default_rng(6).random(W.shape[1]).astype(np.float32) ** 4
    llama = _core.gguf_rtn(W, type=name, imatrix=importance)
    refined = _core.gguf_rtn(W, type=name, imatrix=importance, refine=True)
    t = qg.TYPES[name]
    r = _gguf_solvers.result(t, refined, method="rtn", seconds=0.0)
    assert same_bits(reference_dequantize(qg.pack(r), name), r.weight)
    before = ((W - llama["weight"]).astype(np.float64) ** 2 * importance).sum(axis=1)
    after = ((W - refined["weight"]).astype(np.float64) ** 2 * importance).sum(axis=1)
    assert np.all(after <= before * (1 + 1e-6))
    assert after.sum() < before.sum()


@pytest.mark.parametrize("make", [dead_columns, rank_deficient])
@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "IQ4_NL"])
def test_gguf_solvers_on_dead_columns_and_singular_hessians(make, name):
    """Dead columns (diag(H) == 0: no importance) and a singular H (damping) still give exact, finite blocks."""
    p = make(rows=16, cols=512, seed=13)
    for r in (
        quantease.gptq(p.W, p.H, gguf=name, act_order=True),
        quantease.quantease(p.W, p.H, gguf=name, iters=6),
    ):
        assert np.all(np.isfinite(r.weight))
        assert same_bits(reference_dequantize(qg.pack(r), name), r.weight)
        assert r.loss == pytest.approx(quantease.layer_loss(p.W, r.weight, p.H))
