"""Input handling of rtn/gptq/layer_loss: every bad input raises ValueError with the documented message,
inputs are never modified, and every accepted dtype/memory order gives the float32 C-order result."""

from __future__ import annotations

import re

import numpy as np
import pytest

import problems
import quantease

P = problems.llm_like(8, 32, seed=0)


def gptq_call(**over):
    kw = dict(W=P.W, H=P.H)
    kw.update(over)
    W, H = kw.pop("W"), kw.pop("H")
    return quantease.gptq(W, H, **kw)


def rtn_call(**over):
    kw = dict(W=P.W)
    kw.update(over)
    return quantease.rtn(kw.pop("W"), **kw)


def raises(fragment: str):
    return pytest.raises(ValueError, match=re.escape(fragment))


CALLS = {"gptq": gptq_call, "rtn": rtn_call}


# --- bad W (both solvers) -------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", sorted(CALLS))
@pytest.mark.parametrize(
    "W", [np.ones(8, np.float32), np.ones((2, 4, 8), np.float32), np.float32(1.0)], ids=["1d", "3d", "0d"]
)
def test_w_not_2d(solver, W):
    with raises("W must be a 2-D array"):
        CALLS[solver](W=W)


@pytest.mark.parametrize("solver", sorted(CALLS))
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object])
def test_w_dtype(solver, dtype):
    with raises("W must be a real floating-point array"):
        CALLS[solver](W=np.ones((8, 32), dtype=dtype))


@pytest.mark.parametrize("solver", sorted(CALLS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_w_nan_inf(solver, bad):
    W = P.W.copy()
    W[3, 7] = bad
    with raises("W contains NaN or Inf"):
        CALLS[solver](W=W)


@pytest.mark.parametrize("solver", sorted(CALLS))
@pytest.mark.parametrize("shape", [(0, 32), (8, 0), (0, 0)])
def test_w_empty(solver, shape):
    W = np.zeros(shape, np.float32)
    over = dict(W=W)
    if solver == "gptq":
        over["H"] = np.eye(shape[1], dtype=np.float32)
    with raises("W must have at least one row and one column"):
        CALLS[solver](**over)


# --- bad options (both solvers) -------------------------------------------------------------------------


@pytest.mark.parametrize("solver", sorted(CALLS))
@pytest.mark.parametrize("bits", [0, 1, 9, 16, -4, 4.5, "4", None])
def test_bits(solver, bits):
    with raises("bits must be an integer in 2..8"):
        CALLS[solver](bits=bits)


@pytest.mark.parametrize("solver", sorted(CALLS))
@pytest.mark.parametrize("group_size", [0, -2, 5, 7, 64, 33, 2.5, "8", None])
def test_group_size(solver, group_size):
    with raises("group_size must be -1 or a positive divisor of cols"):
        CALLS[solver](group_size=group_size)


@pytest.mark.parametrize("solver", sorted(CALLS))
def test_integer_like_options_are_accepted(solver):
    res = CALLS[solver](bits=np.int64(3), group_size=np.int32(8))
    assert res.bits == 3 and res.group_size == 8


# --- bad H and gptq-only options ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(31, 31), (32, 31), (31, 32), (32,), (32, 32, 1), (64, 64)])
def test_h_shape(shape):
    H = np.ones(shape, np.float32)
    with raises("H must be (32, 32) to match W's 32 columns"):
        gptq_call(H=H)


def test_h_not_symmetric():
    H = P.H.copy()
    H[0, 5] += 0.01 * np.abs(H).max()
    with raises("H must be symmetric"):
        gptq_call(H=H)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_h_nan_inf(bad):
    H = P.H.copy()
    H[2, 2] = bad
    with raises("H contains NaN or Inf"):
        gptq_call(H=H)
    H = P.H.copy()
    H[1, 4] = H[4, 1] = bad
    with raises("H contains NaN or Inf"):
        gptq_call(H=H)


@pytest.mark.parametrize("block_size", [0, -1, -128])
def test_block_size(block_size):
    with raises("block_size must be a positive integer"):
        gptq_call(block_size=block_size)


@pytest.mark.parametrize("damp", [-0.01, -1.0, np.nan, np.inf, -np.inf])
def test_damp(damp):
    with raises("damp must be a finite number >= 0"):
        gptq_call(damp=damp)


def test_unknown_keyword_is_an_error():
    with pytest.raises(TypeError):
        gptq_call(groupsize=16)
    with pytest.raises(TypeError):
        quantease.gptq(P.W, P.H, 4)  # options are keyword-only


# --- inputs are never modified ---------------------------------------------------------------------------


@pytest.mark.parametrize("w_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("h_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_inputs_unchanged(w_dtype, h_dtype, order):
    p = problems.dead_columns(8, 32, seed=1)
    W = np.array(p.W, dtype=w_dtype, order=order)
    H = np.array(p.H, dtype=h_dtype, order=order)
    W0, H0 = W.copy(order="K"), H.copy(order="K")
    quantease.gptq(W, H, group_size=8, act_order=True)
    quantease.gptq(W, H, sym=True, reference=True)
    quantease.rtn(W, group_size=8, mse=True)
    quantease.layer_loss(np.ascontiguousarray(W), W * 0.5, H)
    for a, a0 in ((W, W0), (H, H0)):
        assert a.dtype == a0.dtype and a.flags.f_contiguous == a0.flags.f_contiguous
        np.testing.assert_array_equal(a, a0)


def test_layer_loss_fortran_order():
    p = problems.llm_like(8, 32, seed=5)
    W = np.asfortranarray(p.W)
    assert quantease.layer_loss(W, W * 0.5, p.H) == pytest.approx(quantease.layer_loss(p.W, p.W * 0.5, p.H), rel=1e-12)


# --- every accepted input form gives the float32 C-order result -------------------------------------------


def _same(a, b, exact_loss=True):
    """Same result; the loss is taken against the INPUT W, so it is exact only for equal input values."""
    for field in ("weight", "codes", "scales", "zeros", "g_idx"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    if a.loss is None or b.loss is None:
        assert a.loss is None and b.loss is None
    elif exact_loss:
        assert a.loss == b.loss
    else:
        assert a.loss == pytest.approx(b.loss, rel=1e-5)


def _forms(W):
    """W in other dtypes/orders/strides holding the same float32 values."""
    yield "float16-exact", W.astype(np.float16).astype(np.float32), W.astype(np.float16)
    yield "float64", W, W.astype(np.float64)
    yield "fortran", W, np.asfortranarray(W)
    big = np.zeros((W.shape[0], 2 * W.shape[1]), np.float32)
    big[:, ::2] = W
    yield "strided", W, big[:, ::2]
    yield "readonly", W, _readonly(W)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("form", ["float16-exact", "float64", "fortran", "strided", "readonly"])
def test_input_forms_equal_float32(form):
    p = problems.llm_like(8, 32, seed=2)
    name, W32, W = next(f for f in _forms(p.W) if f[0] == form)
    _same(quantease.rtn(W, bits=3, group_size=8), quantease.rtn(W32, bits=3, group_size=8))
    _same(quantease.gptq(W, p.H, bits=3, group_size=8), quantease.gptq(W32, p.H, bits=3, group_size=8))


def test_h_forms_equal():
    p = problems.llm_like(8, 32, seed=3)  # H holds float32 values
    base = quantease.gptq(p.W, p.H, act_order=True)
    for H in (
        p.H.astype(np.float64),
        np.asfortranarray(p.H),
        _readonly(p.H),
        p.H.astype(np.float16).astype(np.float32),
    ):
        res = quantease.gptq(p.W, H, act_order=True)
        if H.dtype == np.float32 and not np.array_equal(H, p.H):
            continue  # the float16-rounded H is a different problem; it only has to be accepted
        _same(res, base)


def test_lists_are_accepted():
    W = [[0.1, -0.2, 0.3, 0.0], [1.0, 2.0, -3.0, 0.5]]
    res = quantease.gptq(W, np.eye(4).tolist(), bits=4)
    _same(res, quantease.gptq(np.array(W, np.float32), np.eye(4), bits=4), exact_loss=False)


def test_float64_weights_are_rounded_to_float32():
    # the solvers work on float32 weights: a float64 W gives the result of W.astype(float32)
    rng = np.random.default_rng(4)
    W64 = rng.standard_normal((8, 32))
    H = problems.llm_like(8, 32, seed=4).H
    _same(quantease.gptq(W64, H), quantease.gptq(W64.astype(np.float32), H), exact_loss=False)
