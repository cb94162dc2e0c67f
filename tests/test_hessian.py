"""HessianAccumulator: streaming H = (2/n) sum x x^T in the C++ core."""

import re

import numpy as np
import pytest

import quantease


@pytest.mark.parametrize("float64", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batches_add_up_to_the_direct_hessian(float64, dtype):
    rng = np.random.default_rng(0)
    cols = 200  # not a multiple of the 128-column block
    batches = [rng.standard_normal((n, cols)).astype(dtype) for n in (7, 64, 129)]
    acc = quantease.HessianAccumulator(cols, dtype="float64" if float64 else "float32")
    for X in batches:
        acc.add(X)
    X = np.concatenate(batches).astype(np.float64)
    expected = 2.0 / X.shape[0] * X.T @ X
    H = acc.hessian()
    assert acc.n_samples == X.shape[0]
    assert H.dtype == (np.float64 if float64 else np.float32)
    assert np.array_equal(H, H.T)
    tol = 1e-12 if (float64 and dtype == np.float64) else 1e-5
    np.testing.assert_allclose(H, expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_any_float_layout_and_3d_batches():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 5, 16))
    acc_c, acc_f = quantease.HessianAccumulator(16), quantease.HessianAccumulator(16)
    acc_c.add(X)
    acc_f.add(np.asfortranarray(X.reshape(10, 16)))
    assert acc_c.n_samples == acc_f.n_samples == 10
    np.testing.assert_array_equal(acc_c.hessian(), acc_f.hessian())


def test_inputs_unchanged_and_reset():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((32, 16)).astype(np.float32)
    before = X.copy()
    acc = quantease.HessianAccumulator(16)
    acc.add(X)
    assert np.array_equal(X, before)
    acc.reset()
    assert acc.n_samples == 0
    assert not acc.hessian().any()


def test_bad_batches_raise_value_error():
    acc = quantease.HessianAccumulator(8)
    with pytest.raises(
        ValueError, match=re.escape("X must be (n, 8) to match the accumulator's 8 columns, got (4, 9)")
    ):
        acc.add(np.zeros((4, 9), np.float32))
    bad = np.zeros((4, 8), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=re.escape("X contains NaN or Inf (first at row 2, column 3)")):
        acc.add(bad)
    with pytest.raises(
        ValueError, match=re.escape("X must be a real floating-point array (float16/float32/float64), got int32")
    ):
        acc.add(np.zeros((4, 8), np.int32))
    with pytest.raises(ValueError, match="cols must be a positive integer"):
        quantease.HessianAccumulator(0)


def test_accumulated_hessian_feeds_gptq():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((256, 64)).astype(np.float32)
    W = rng.standard_normal((32, 64)).astype(np.float32)
    acc = quantease.HessianAccumulator(64)
    acc.add(X)
    result = quantease.gptq(W, acc.hessian(), bits=4)
    assert result.loss < quantease.layer_loss(W, quantease.rtn(W, bits=4).weight, acc.hessian())
