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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_partial_sums_of_shards_fold_in_order(dtype):
    """sum() / add_sum(): shards accumulated apart and folded in shard order give the same bits as a
    single fold of the same shards, wherever each shard was accumulated; n counts every shard's rows."""
    rng = np.random.default_rng(5)
    cols = 150
    shards = [[rng.standard_normal((n, cols)).astype(np.float32) for n in sizes] for sizes in ((9, 40), (33,), (5, 6))]
    partial = []
    for shard in shards:
        acc = quantease.HessianAccumulator(cols, dtype=dtype)
        for X in shard:
            acc.add(X)
        S = acc.sum()
        assert S.dtype == np.dtype(dtype) and np.array_equal(S, S.T)
        assert np.array_equal(acc.hessian(), S * S.dtype.type(2.0 / acc.n_samples))
        partial.append((S, acc.n_samples))
    total = quantease.HessianAccumulator(cols, dtype=dtype)
    for S, n in partial:
        total.add_sum(S, n)
    assert total.n_samples == sum(X.shape[0] for shard in shards for X in shard)
    expected = partial[0][0].copy()
    for S, _ in partial[1:]:
        expected += S
    assert np.array_equal(total.sum(), expected)
    everything = np.concatenate([X for shard in shards for X in shard]).astype(np.float64)
    # float32 batches: each batch's product at float32 precision (the float32 GEMM), whatever the sum keeps
    np.testing.assert_allclose(
        total.hessian(), 2.0 / everything.shape[0] * everything.T @ everything, rtol=1e-5, atol=1e-4
    )


def test_float64_batches_keep_float64_products():
    """A float64 batch into the float64 accumulator is multiplied in float64 (exact to float64 round-off); the
    same values as float32 batches go through the float32 GEMM: float32 round-off per batch product."""
    rng = np.random.default_rng(7)
    batches32 = [rng.standard_normal((n, 150)).astype(np.float32) for n in (9, 40, 33)]
    batches64 = [X.astype(np.float64) for X in batches32]  # the very same values
    everything = np.concatenate(batches64)
    expected = 2.0 / everything.shape[0] * everything.T @ everything
    acc64 = quantease.HessianAccumulator(150, dtype="float64")
    acc32 = quantease.HessianAccumulator(150, dtype="float64")
    for X32, X64 in zip(batches32, batches64):
        acc64.add(X64)
        acc32.add(X32)
    np.testing.assert_allclose(acc64.hessian(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc32.hessian(), expected, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(acc32.hessian(), acc64.hessian())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_release_hands_over_the_matrix_and_empties_the_accumulator(dtype):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((50, 130)).astype(np.float32)
    acc = quantease.HessianAccumulator(130, dtype=dtype)
    acc.add(X)
    H, S = acc.hessian(), acc.sum()
    assert np.array_equal(acc.hessian(release=True), H)
    assert acc.n_samples == 0 and not acc.sum().any()
    acc.add(X)  # usable again, as after reset()
    assert np.array_equal(acc.sum(release=True), S)
    assert acc.n_samples == 0
    acc.add_sum(S, 50)
    assert np.array_equal(acc.hessian(), H)


def test_add_sum_checks_shape_dtype_and_count():
    acc = quantease.HessianAccumulator(4)
    with pytest.raises(ValueError, match=re.escape("S must be (4, 4) to match the accumulator's columns, got (4, 3)")):
        acc.add_sum(np.zeros((4, 3)), 1)
    with pytest.raises(ValueError, match=re.escape("S must be a C-contiguous float64 array (the accumulator's dtype)")):
        acc.add_sum(np.zeros((4, 4), np.float32), 1)
    with pytest.raises(ValueError, match=re.escape("n_samples must be >= 0, got -1")):
        acc.add_sum(np.zeros((4, 4)), -1)
    assert acc.n_samples == 0
