"""The shared grid and RTN: the oracle's own rules, and the C++ RTN bit for bit against the float32 oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import problems
import quantease
from reference import fit_grid, fit_row, layer_loss, maxq_of, quantize_codes
from reference import rtn as ref_rtn

BITS = [2, 3, 4, 8]


# --- the oracle's grid rules (specs/gptq.md "Grid"), checked on hand-made rows ----------------------------


def test_oracle_range_contains_zero():
    scale, zero = fit_row(np.array([1.0, 2.0, 3.0]), bits=4)
    assert zero == 0 and scale == pytest.approx(3 / 15)
    scale, zero = fit_row(np.array([-3.0, -1.0]), bits=4)
    assert zero == 15 and scale == pytest.approx(3 / 15)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [False, True])
def test_oracle_all_zero_guard(bits, sym):
    scale, zero = fit_row(np.zeros(8), bits=bits, sym=sym)
    maxq = maxq_of(bits)
    assert scale == pytest.approx(2 / maxq)
    if sym:
        assert zero == (maxq + 1) / 2
    else:  # zero = rint(1 / (2 / maxq)): maxq / 2 up to round-off
        assert zero in (np.floor(maxq / 2), np.ceil(maxq / 2))
    # an all-zero row is represented exactly
    assert quantize_codes(np.zeros(1), scale, zero, maxq)[0] == zero


def test_oracle_rounds_half_to_even():
    codes = quantize_codes(np.array([0.5, 1.5, 2.5, -0.5, 3.5]), 1.0, 4.0, 15)
    assert codes.tolist() == [4.0, 6.0, 6.0, 4.0, 8.0]


def test_oracle_symmetric_quirk_only_in_reference():
    row = np.array([0.0, 0.25, 1.0])  # no negative value
    s_fixed, z_fixed = fit_row(row, bits=4, sym=True)
    s_ref, z_ref = fit_row(row, bits=4, sym=True, reference_quirks=True)
    assert z_fixed == z_ref == 8
    assert s_fixed == pytest.approx(2 / 15)  # xmin = -xmax
    assert s_ref == pytest.approx(1 / 15)  # xmin kept at 0: the grid tops out at 7/15 of max
    # a row with a negative value is the same in both modes
    row = np.array([-0.5, 1.0])
    assert fit_row(row, 4, sym=True) == fit_row(row, 4, sym=True, reference_quirks=True)


def test_oracle_mse_never_worse_than_minmax():
    W = problems.llm_like(16, 64, seed=1).W
    for sym in (False, True):
        s0, z0 = fit_grid(W, 3, sym)
        s1, z1 = fit_grid(W, 3, sym, mse=True)
        maxq = maxq_of(3)

        def err(s, z, maxq=maxq):
            q = s[:, None] * (quantize_codes(W, s[:, None], z[:, None], maxq) - z[:, None])
            return np.sum(np.abs(q - W) ** 2.4, axis=1)

        assert np.all(err(s1, z1) <= err(s0, z0) * (1 + 1e-12))


# --- C++ RTN against the float32 oracle: no accumulation, so bit-identical ----------------------------------


def _assert_rtn_equal(res, ref):
    np.testing.assert_array_equal(res.codes, ref["codes"])
    np.testing.assert_array_equal(res.scales, ref["scales"])
    np.testing.assert_array_equal(res.zeros, ref["zeros"])
    np.testing.assert_array_equal(res.g_idx, ref["g_idx"])
    np.testing.assert_array_equal(res.weight, ref["weight"])


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group_size", [-1, 16])
@pytest.mark.parametrize("mse", [False, True])
def test_rtn_matches_oracle_bit_for_bit(bits, sym, group_size, mse):
    W = problems.llm_like(32, 128, seed=bits).W
    res = quantease.rtn(W, bits=bits, group_size=group_size, sym=sym, mse=mse)
    _assert_rtn_equal(res, ref_rtn(W, bits, group_size, sym, mse))


@pytest.mark.parametrize("sym", [False, True])
def test_rtn_all_zero_and_one_signed_rows(sym):
    p = problems.zero_rows(16, 64, seed=2)
    W = p.W.copy()
    W[1] = np.abs(W[1])  # no negative value
    W[2] = -np.abs(W[2])  # no positive value
    W[3, :32] = 0  # one all-zero group
    for gs in (-1, 32):
        res = quantease.rtn(W, bits=4, group_size=gs, sym=sym)
        _assert_rtn_equal(res, ref_rtn(W, 4, gs, sym, False))
        assert np.all(res.weight[p.info["zero"]] == 0)


def test_rtn_result_fields():
    W = problems.random_problem(8, 32, seed=3).W
    res = quantease.rtn(W, bits=3, group_size=8)
    assert isinstance(res, quantease.QuantResult)
    assert res.method == "rtn" and res.bits == 3 and res.group_size == 8 and res.sym is False
    assert res.loss is None and res.perm is None
    assert res.weight.dtype == np.float32 and res.codes.dtype == np.uint8
    assert res.scales.shape == res.zeros.shape == (8, 4)
    assert res.g_idx.dtype == np.int32 and res.g_idx.tolist() == [c // 8 for c in range(32)]
    assert res.seconds >= 0


# --- properties of any RTN result ---------------------------------------------------------------------------


@st.composite
def rtn_cases(draw):
    rows = draw(st.integers(1, 12))
    group_size, groups = draw(st.sampled_from([(-1, 1), (1, 7), (4, 3), (8, 4), (16, 2), (5, 5)]))
    cols = groups * (group_size if group_size > 0 else draw(st.integers(1, 40)))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 0.5, -0.5]))
    rng = np.random.default_rng(seed)
    W = ((rng.standard_normal((rows, cols)) + offset) * scale).astype(np.float32)
    if draw(st.booleans()):
        W[rng.random(W.shape) < 0.3] = 0  # exact zeros, sometimes whole rows or groups
    return W, draw(st.sampled_from(BITS)), group_size, draw(st.booleans()), draw(st.booleans())


@given(rtn_cases())
def test_rtn_properties(case):
    W, bits, group_size, sym, mse = case
    res = quantease.rtn(W, bits=bits, group_size=group_size, sym=sym, mse=mse)
    maxq = maxq_of(bits)
    assert res.codes.max() <= maxq
    assert np.all(np.isfinite(res.weight)) and np.all(res.scales > 0)
    np.testing.assert_array_equal(res.zeros, np.rint(res.zeros))
    if sym:
        assert np.all(res.zeros == (maxq + 1) / 2)
    # weight == scales * (codes - zeros) per group, exactly (float32)
    np.testing.assert_array_equal(res.weight, res.grid_weight())
    if not mse:
        # min-max grid: nothing is clipped, every weight is within half a step of its grid value
        half = res.scales[:, res.g_idx] / 2
        assert np.all(np.abs(res.weight - W) <= half * (1 + 1e-4) + np.abs(W) * 1e-6)
    _assert_rtn_equal(res, ref_rtn(W, bits, group_size, sym, mse))


def test_rtn_tiny_range_stays_finite():
    # A range so small that (xmax - xmin)/maxq underflows must not divide by zero.
    W = np.array([[1e-44, -1e-45, 0.0, 2e-45]], dtype=np.float32)
    res = quantease.rtn(W, bits=8)
    assert np.all(np.isfinite(res.weight)) and np.all(res.scales > 0)
    assert res.codes.max() <= 255


def test_layer_loss_matches_oracle():
    p = problems.llm_like(16, 64, seed=4)
    W_hat = quantease.rtn(p.W, bits=3).weight
    for H in (p.H, p.H.astype(np.float64)):
        got = quantease.layer_loss(p.W, W_hat, H)
        assert isinstance(got, float)
        assert got == pytest.approx(layer_loss(p.W, W_hat, H), rel=1e-10)
    assert quantease.layer_loss(p.W, p.W, p.H) == 0.0
