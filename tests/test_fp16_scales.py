"""fp16_scales=True: every scale is a float16 value before the codes are computed, so a GPTQ checkpoint
with fp16 scales dequantizes to exactly the solver's weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import quantease
from problems import llm_like
from reference.rtn import rtn as rtn_oracle

pytest.importorskip("safetensors")
from quantease import export  # noqa: E402


def _weights(seed, rows=48, cols=256):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    W[:, 7] *= 30.0  # an outlier channel makes some scales large, others small
    return W


def _is_fp16(a):
    a = np.asarray(a, dtype=np.float32)
    return np.array_equal(a.astype(np.float16).astype(np.float32), a)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 64])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_matches_the_oracle_with_fp16_scales(bits, group_size, sym):
    W = _weights(bits * 10 + (group_size > 0))
    r = quantease.rtn(W, bits=bits, group_size=group_size, sym=sym, fp16_scales=True)
    ref = rtn_oracle(W, bits=bits, group_size=group_size, sym=sym, fp16_scales=True)
    assert _is_fp16(r.scales)
    np.testing.assert_array_equal(r.scales, ref["scales"])
    np.testing.assert_array_equal(r.zeros, ref["zeros"])
    # Codes may differ only where the weight sits on a rounding tie of the oracle's float32 division.
    assert np.mean(r.codes == ref["codes"]) > 0.999
    np.testing.assert_array_equal(r.weight, r.grid_weight())


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_fp16_scales_export_is_bit_exact(tmp_path, sym, act_order):
    prob = llm_like(rows=48, cols=256, seed=3)
    W, H = prob.W, prob.H
    r = quantease.gptq(W, H, bits=4, group_size=64, sym=sym, act_order=act_order, fp16_scales=True)
    assert _is_fp16(r.scales)
    assert export.gptq_deviation(r) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", export.GPTQConsumerWarning)  # asymmetric 4-bit: about GPTQModel's kernel
        export.save_gptq(tmp_path / "m", {"l": r}, strict=True, checkpoint_format="gptq_v2")
    np.testing.assert_array_equal(export.load_gptq(tmp_path / "m")["l"], r.weight)
    # Without the option the float32 scales are not float16 values and the export deviates.
    plain = quantease.gptq(W, H, bits=4, group_size=64, sym=sym, act_order=act_order)
    assert export.gptq_deviation(plain) > 0.0
    # Rounding the scales costs at most a little loss.
    assert r.loss <= plain.loss * 1.05


def test_tiny_and_huge_scales_stay_finite_and_nonzero():
    W = np.zeros((2, 64), dtype=np.float32)
    W[0] = np.linspace(-1e-9, 1e-9, 64)  # scale far below float16's smallest subnormal
    W[1] = np.linspace(-1e6, 1e6, 64)  # scale above float16's largest value
    r = quantease.rtn(W, bits=4, fp16_scales=True)
    assert np.all(np.isfinite(r.scales)) and np.all(r.scales > 0)
    assert _is_fp16(r.scales) and r.scales[1, 0] == 65504.0
    assert np.all(np.isfinite(r.weight))


def test_fp16_scales_must_be_bool():
    W = _weights(1)
    with pytest.raises(ValueError, match="fp16_scales must be True or False"):
        quantease.rtn(W, fp16_scales="yes")
