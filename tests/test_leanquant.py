"""LeanQuant: the C++ solver against the NumPy oracle (k-means, the affine search against brute force, the
whole layer), its defining properties, LeanQuant vs GPTQ layer loss, determinism, threads, GIL, messages,
and the export round trip."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import problems
import quantease
from problems import code_agreement, rel_diff
from quantease._leanquant import weighted_grid_search, weighted_kmeans
from reference import leanquant as ref
from subprocess_run import assert_python_keeps_running, run_python

MIN_AGREEMENT = 0.995
LOSS_RTOL = 1e-4


def raises(fragment: str):
    return pytest.raises(ValueError, match=re.escape(fragment))


# --- the whole solver against the oracle ------------------------------------------------------------------


@pytest.mark.parametrize("grid", ["nonuniform", "affine"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "name,act_order,group_size",
    [("llm_like", True, -1), ("dead_columns", True, 32), ("llm_like", False, 64), ("zero_rows", True, -1)],
)
def test_matches_oracle(grid, bits, name, act_order, group_size):
    p = problems.make(name, 24, 128, seed=bits)
    res = quantease.leanquant(
        p.W, p.H, bits=bits, grid=grid, act_order=act_order, group_size=group_size, grid_steps=40, seed=5
    )
    # The library's s comes from its float32 U; the oracle's own (float64 U) agrees to float32 round-off.
    o = ref.leanquant(
        p.W,
        p.H,
        bits=bits,
        grid=grid,
        act_order=act_order,
        group_size=group_size,
        grid_steps=40,
        seed=5,
        importance=res.info["importance"],
    )
    own = ref.leanquant(
        p.W, p.H, bits=bits, grid=grid, act_order=act_order, group_size=group_size, grid_steps=4, seed=5, kmeans_iters=1
    )["importance"]
    np.testing.assert_allclose(res.info["importance"], own, rtol=2e-4 * max(bits, 4))
    if grid == "nonuniform":
        span = float(np.ptp(p.W)) or 1.0
        np.testing.assert_allclose(res.codebook, o["codebook"], rtol=0, atol=1e-7 * span)
        assert res.scales is None and res.zeros is None
    else:
        np.testing.assert_array_equal(res.scales, o["scales"])
        np.testing.assert_array_equal(res.zeros, o["zeros"])
    assert code_agreement(res.codes, o["codes"]) >= MIN_AGREEMENT
    assert rel_diff(res.loss, o["loss"]) <= LOSS_RTOL, (res.loss, o["loss"])


def test_exponent_zero_single_step_is_plain_kmeans():
    # s = 1 for every column and one Lloyd step from evenly spaced centroids: each row's codebook is the
    # mean of the row's weights nearest each of the 2^bits evenly spaced points.
    p = problems.llm_like(16, 96, seed=3)
    for bits in (2, 3):
        res = quantease.leanquant(p.W, p.H, bits=bits, exponent=0.0, kmeans_iters=1)
        np.testing.assert_array_equal(res.info["importance"], np.ones(96))
        assert np.all(res.info["kmeans_iters"] == 1)
        plain = np.stack([ref.plain_kmeans_step(w, 1 << bits) for w in p.W.astype(np.float64)])
        np.testing.assert_allclose(res.codebook, plain.astype(np.float32), rtol=1e-6, atol=1e-9)


# --- weighted k-means ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [4, 8, 16, 64])
def test_kmeans_matches_oracle(k):
    rng = np.random.default_rng(k)
    X = (rng.standard_t(5, size=(12, 150)) * 0.02).astype(np.float32)
    X[2, :40] = 0.0  # ties
    X[3] = np.round(X[3] * 2000) / 2000  # repeated values
    s = rng.uniform(0.05, 1.0, 150) ** 4
    C, iters = weighted_kmeans(X, s, k, seed=11)
    span = float(np.ptp(X))
    for r in range(X.shape[0]):
        c, it = ref.weighted_kmeans(X[r], s, k, seed=11, stream=r)
        np.testing.assert_allclose(C[r], c, rtol=0, atol=1e-8 * span, err_msg=f"row {r}")
        assert iters[r] == it


def test_kmeans_fewer_distinct_values_than_k():
    # Every distinct value gets a centroid (objective 0): relocated empty clusters soak up the rest.
    rng = np.random.default_rng(3)
    for k, levels in ((8, 3), (8, 7), (16, 9), (64, 9)):
        X = (rng.integers(0, levels, size=(6, 40)) * 0.01 - 0.02).astype(np.float32)
        C, _ = weighted_kmeans(X, rng.uniform(0.1, 1.0, 40), k)
        for x, c in zip(X, C):
            assert set(np.unique(x).astype(np.float64)) <= set(c.astype(np.float32).astype(np.float64))
            assert np.all(np.diff(c) >= 0)


def _objective(x, s, c):
    return float(np.sum(s * np.min((x[:, None] - c[None, :]) ** 2, axis=1)))


def test_kmeans_properties():
    rng = np.random.default_rng(0)
    X = (rng.standard_t(4, size=(20, 300)) * 0.02).astype(np.float32)
    s = rng.uniform(0.01, 1.0, 300) ** 3
    for k in (4, 8, 16):
        prev = None
        for it in (1, 2, 3, 5, 10, 100):
            C, iters = weighted_kmeans(X, s, k, max_iter=it)
            assert np.all(iters <= it)
            assert np.all(np.diff(C, axis=1) >= 0)  # ascending
            assert np.all(C >= X.min(1, keepdims=True)) and np.all(C <= X.max(1, keepdims=True))
            obj = np.array([_objective(X[r].astype(np.float64), s, C[r]) for r in range(20)])
            if prev is not None:  # Lloyd never increases it
                assert np.all(obj <= prev * (1 + 1e-12)), (k, it)
            prev = obj


def test_kmeans_seeded_and_deterministic():
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((8, 200)) * 0.02).astype(np.float32)
    s = rng.uniform(0.1, 1.0, 200)
    a, _ = weighted_kmeans(X, s, 16, seed=1)
    b, _ = weighted_kmeans(X, s, 16, seed=1)
    c, _ = weighted_kmeans(X, s, 16, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # k-means++ (k > 8) depends on the seed
    d, _ = weighted_kmeans(X, s, 8, seed=1)
    e, _ = weighted_kmeans(X, s, 8, seed=2)
    np.testing.assert_array_equal(d, e)  # evenly spaced start: no randomness


# --- the affine search against the brute-force oracle ------------------------------------------------------


def _rows(rng, n):
    X = (rng.standard_t(5, size=(10, n)) * 0.02).astype(np.float32)
    X[1] = np.abs(X[1])  # all >= 0: only zero-point 0 grids
    X[2] = -np.abs(X[2])  # all <= 0
    X[3, : n // 2] = 0.0
    X[4] += 0.05  # mostly positive
    X[5, 0] = 1.0  # one outlier
    return X


def assert_search_equals_brute_force(X, s, bits, steps, check_reported=True):
    """The search's minimum over the (lo, hi) lattice equals brute force's, row by row; with check_reported,
    the reported grid really has the reported error and a valid zero point."""
    res = weighted_grid_search(X, s, bits, steps)
    for r in range(X.shape[0]):
        bf = ref.brute_force_grid_search(X[r], s, bits, steps)
        assert abs(res["error"][r] - bf["error"]) <= 1e-9 * bf["error"] + 1e-18, (r, res["error"][r], bf["error"])
        if check_reported:
            own = ref.weighted_grid_error(X[r].astype(np.float64), s, res["scale"][r], res["zero"][r], bits)
            assert abs(own - res["error"][r]) <= 1e-9 * own + 1e-18
            assert 0 <= res["zero"][r] <= (1 << bits) - 1


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("steps", [1, 2, 7, 16, 33, 64])
def test_grid_search_reaches_the_brute_force_minimum(bits, steps):
    rng = np.random.default_rng(bits * 100 + steps)
    n = 48
    X = _rows(rng, n)
    s = rng.uniform(0.01, 1.0, n) ** 4
    assert_search_equals_brute_force(X, s, bits, steps)


@pytest.mark.parametrize("bits", [3, 4])
def test_grid_search_reaches_the_brute_force_minimum_large_t(bits):
    # a fine split: the search prunes most (scale, zero) pairs by its bounds; the minimum stays the same
    rng = np.random.default_rng(bits)
    X = _rows(rng, 96)[:6]
    s = rng.uniform(0.01, 1.0, 96) ** 4
    assert_search_equals_brute_force(X, s, bits, 500, check_reported=False)


def _group_rows(rng, n):
    """Short rows like one group of a row: heavy tails, one sign, exact zeros, ties, an outlier, a shift."""
    X = (rng.standard_t(4, size=(8, n)) * 0.02).astype(np.float32)
    X[1] = np.abs(X[1])
    X[2] = -np.abs(X[2])
    X[3, ::3] = 0.0
    X[4] = np.round(X[4] * 100) / 100  # few distinct values, many ties
    X[5, 1] = -0.5
    X[6] = rng.uniform(-0.01, 0.03, n)
    X[7] += 0.02
    return X


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n,steps", [(128, 256), (37, 301)])
def test_grid_search_branch_and_bound_equals_brute_force_on_groups(bits, n, steps):
    # the search skips whole blocks of scales by a lower bound; nothing it skips may beat what it returns
    rng = np.random.default_rng(1000 * bits + n)
    X = _group_rows(rng, n)
    s = rng.uniform(0.01, 1.0, n) ** 4
    s[rng.integers(0, n, 3)] = 0.0  # weights may be 0
    assert_search_equals_brute_force(X, s, bits, steps)


@pytest.mark.parametrize("bits", [2, 4])
def test_grid_search_long_rows_equal_brute_force(bits):
    # rows longer than 512 (the wide radix sort) whose bulk crowds a few buckets of the search's position
    # table (outliers stretch [min, max]): positions found from that table must still be exact
    rng = np.random.default_rng(50 + bits)
    n = 1100
    X = (rng.standard_t(5, size=(4, n)) * 0.01).astype(np.float32)
    X[0, 7] = 2.0  # one far outlier: the bulk sits in ~1 % of the buckets
    X[1, :3] = [-3.0, 1.5, 2.5]
    X[2] = np.round(X[2] * 300) / 300  # many ties
    X[3] = np.abs(X[3]) + 1e-3
    s = rng.uniform(0.01, 1.0, n) ** 4
    assert_search_equals_brute_force(X, s, bits, 96, check_reported=False)


@pytest.mark.parametrize("bits,n,steps", [(5, 128, 150), (6, 64, 200), (8, 128, 120), (4, 256, 160), (4, 200, 17)])
def test_grid_search_sweep_equals_brute_force(bits, n, steps):
    # groups of <= 256 values at 4 bits and more take the event sweep over the scales, not the branch and
    # bound: every (scale, zero) it sweeps past must still lose to what it returns
    rng = np.random.default_rng(7 * bits + n)
    X = _group_rows(rng, n)
    s = rng.uniform(0.01, 1.0, n) ** 4
    s[rng.integers(0, n, 3)] = 0.0
    assert_search_equals_brute_force(X, s, bits, steps)


def test_grid_search_sweep_rows_on_a_grid():
    # values exactly on a 4-bit grid (error 0 reachable): the sweep's sum cannot rank candidates within its
    # round-off of 0 and hands the family to the branch and bound, which must still find the 0
    k = np.arange(-7, 9, dtype=np.float64)
    X = np.stack([np.resize(k, 64) * 0.01, np.resize(k, 64) * 0.25 + 0.0]).astype(np.float32)
    s = np.random.default_rng(3).uniform(0.1, 1.0, 64)
    res = weighted_grid_search(X, s, 4, 64)
    for r in range(X.shape[0]):
        bf = ref.brute_force_grid_search(X[r], s, 4, 64)
        assert bf["error"] <= 1e-12 * np.sum(s * X[r].astype(np.float64) ** 2)
        assert res["error"][r] <= bf["error"] + 1e-12 * np.sum(s * X[r].astype(np.float64) ** 2)


def test_grid_search_constant_row():
    res = weighted_grid_search(np.full((1, 10), 0.5, np.float32), np.ones(10), 4, 16)
    assert np.isnan(res["scale"][0]) and np.isnan(res["error"][0])


def test_affine_grid_never_worse_than_minmax():
    p = problems.dead_columns(32, 128, seed=4)
    for group_size in (-1, 32):
        res = quantease.leanquant(p.W, p.H, bits=3, grid="affine", group_size=group_size, grid_steps=256)
        ge, me = res.info["grid_error"], res.info["minmax_error"]
        assert np.all(ge <= me)
        assert np.mean(ge < me * (1 - 1e-3)) > 0.5  # and it usually finds a clearly better one
        # the minmax error is the foundation's min-max grid evaluated by the oracle
        W = p.W.copy()
        W[:, p.info["dead"]] = 0
        gs = 128 if group_size == -1 else group_size
        s = res.info["importance"]
        me2 = me.reshape(32, -1)
        for r in range(0, 32, 7):
            for g in range(128 // gs):
                x = W[r, g * gs : (g + 1) * gs]
                sc, z = quantease.rtn(x[None, :], bits=3).scales[0, 0], quantease.rtn(x[None, :], bits=3).zeros[0, 0]
                e = ref.weighted_grid_error(x, s[g * gs : (g + 1) * gs], sc, z, 3, np.float32)
                assert rel_diff(e, me2[r, g]) <= 1e-9


@pytest.mark.parametrize("cols,group_size", [(1024, -1), (512, 128)])
def test_affine_fit_on_crowded_rows_equals_brute_force(cols, group_size):
    # leanquant's own fit keeps each row in bucket order and sorts only crowded buckets: rows with many equal
    # values (zeros, a few levels, one repeated value) must still get the least error over the candidates
    rng = np.random.default_rng(cols)
    W = (rng.standard_t(4, size=(6, cols)) * 0.02).astype(np.float32)
    W[0, rng.random(cols) < 0.6] = 0.0
    W[1] = np.round(W[1] * 100) / 100
    W[2, : cols * 3 // 4] = W[2, 0]
    W[3] = np.abs(W[3])
    W[3, : cols // 2] = 0.0
    H = problems.make("random", 6, cols, seed=1).H
    for bits in (3, 4):
        res = quantease.leanquant(W, H, bits=bits, grid="affine", group_size=group_size, grid_steps=64)
        s = res.info["importance"]
        gs = cols if group_size == -1 else group_size
        ge = res.info["grid_error"].reshape(6, -1)
        for r in range(6):
            for g in range(cols // gs):
                x, sg = W[r, g * gs : (g + 1) * gs], s[g * gs : (g + 1) * gs]
                mm = quantease.rtn(x[None, :], bits=bits)
                best = ref.weighted_grid_error(x, sg, mm.scales[0, 0], mm.zeros[0, 0], bits, np.float32)
                if x.max() > x.min():
                    bf = ref.brute_force_grid_search(x, sg, bits, 64)
                    best = min(
                        best,
                        ref.weighted_grid_error(
                            x, sg, np.float32(bf["scale"]), np.float32(bf["zero"]), bits, np.float32
                        ),
                    )
                assert rel_diff(ge[r, g], best) <= 1e-9, (bits, r, g, ge[r, g], best)


# --- against GPTQ ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nonuniform_beats_gptq(bits):
    for seed in range(3):
        p = problems.llm_like(48, 256, seed=seed)
        g = quantease.gptq(p.W, p.H, bits=bits, act_order=True, damp=0.1)
        lq = quantease.leanquant(p.W, p.H, bits=bits)
        assert lq.loss < g.loss, (bits, seed, lq.loss, g.loss)


def test_affine_vs_gptq_on_most_problems():
    wins, total = 0, 0
    for bits in (2, 3, 4):
        for seed in range(3):
            for name in ("llm_like", "dead_columns"):
                p = problems.make(name, 32, 256, seed=seed)
                for group_size in (-1, 64):
                    g = quantease.gptq(
                        p.W, p.H, bits=bits, act_order=True, damp=0.1, group_size=group_size, static_groups=True
                    )
                    lq = quantease.leanquant(p.W, p.H, bits=bits, grid="affine", group_size=group_size, grid_steps=512)
                    wins += lq.loss <= g.loss
                    total += 1
    assert wins >= 0.75 * total, (wins, total)


# --- result fields ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [-1, 32])
def test_result_fields(group_size):
    p = problems.dead_columns(16, 128, seed=2)
    G = 1 if group_size == -1 else 128 // group_size
    for bits in (2, 4):
        r = quantease.leanquant(p.W, p.H, bits=bits, group_size=group_size)
        assert r.method == "leanquant" and r.sym is False and r.bits == bits
        assert r.codebook.dtype == np.float32
        assert r.codebook.shape == ((16, 1 << bits) if G == 1 else (16, G, 1 << bits))
        assert np.all(np.diff(r.codebook, axis=-1) >= 0)
        assert r.codes.dtype == np.uint8 and r.codes.max() < (1 << bits)
        np.testing.assert_array_equal(r.grid_weight(), r.weight)
        np.testing.assert_array_equal(r.g_idx, np.arange(128) // (128 if G == 1 else group_size))
        assert r.perm is not None and sorted(r.perm) == list(range(128))
        assert set(r.info["phase_seconds"]) == {"factor", "kmeans", "column_loop", "dequantize"}
        # grid_error: the weighted error of each codebook on the (dead-zeroed) original weights
        W0 = p.W.copy()
        W0[:, p.info["dead"]] = 0
        cb = r.codebook.reshape(16, G, -1)
        s = r.info["importance"]
        for row in (0, 7, 15):
            for g in range(G):
                cols = slice(g * (128 // G), (g + 1) * (128 // G))
                x = W0[row, cols]
                mids = np.float32(0.5) * (cb[row, g, 1:] + cb[row, g, :-1])
                q = cb[row, g, np.searchsorted(mids, x, side="left")].astype(np.float64)
                e = float(np.sum(s[cols] * (x.astype(np.float64) - q) ** 2))
                assert rel_diff(r.info["grid_error"].reshape(16, G)[row, g], e) <= 1e-8
        a = quantease.leanquant(p.W, p.H, bits=bits, group_size=group_size, grid="affine", grid_steps=64)
        assert a.codebook is None and a.scales.shape == (16, G) and a.zeros.shape == (16, G)
        assert np.all(a.zeros == np.round(a.zeros)) and a.zeros.min() >= 0 and a.zeros.max() <= (1 << bits) - 1
        np.testing.assert_array_equal(a.grid_weight(), a.weight)
        assert "grid_search" in a.info["phase_seconds"]
        assert r.loss == pytest.approx(quantease.layer_loss(p.W, r.weight, p.H), rel=1e-12)


def test_dead_columns_are_zero_and_inputs_unchanged():
    p = problems.dead_columns(16, 64, seed=5)
    for dtype in (np.float16, np.float64):
        W = np.asfortranarray(p.W.astype(dtype))
        H = p.H.astype(np.float64)
        W0, H0 = W.copy(order="K"), H.copy()
        r = quantease.leanquant(W, H, bits=3)
        quantease.leanquant(W, H, bits=3, grid="affine", group_size=16, grid_steps=32)
        np.testing.assert_array_equal(W, W0)
        np.testing.assert_array_equal(H, H0)
        assert W.flags.f_contiguous
    # a dead column receives no error feedback (its row of H^-1 is isolated): it stays 0 and takes the
    # codebook entry nearest 0 (midpoint rule: the lower one on a tie)
    dead = p.info["dead"]
    mids = np.float32(0.5) * (r.codebook[:, 1:] + r.codebook[:, :-1])
    nearest0 = np.array([np.searchsorted(m, np.float32(0.0), side="left") for m in mids])
    np.testing.assert_array_equal(r.codes[:, dead], np.repeat(nearest0[:, None], len(dead), axis=1))


def test_singular_hessian_takes_more_damping():
    p = problems.rank_deficient(16, 64, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = quantease.leanquant(p.W, p.H, damp=0.0)
    assert r.damp > 0 and r.info["damp_attempts"] > 1
    assert any("damp" in str(w.message) for w in caught)


def test_negative_definite_hessian_raises():
    p = problems.llm_like(8, 32, seed=1)
    with pytest.raises(quantease.NumericalError):
        quantease.leanquant(p.W, -p.H)


# --- input validation: the same messages as the other solvers -----------------------------------------------------

P = problems.llm_like(8, 32, seed=0)


def call(**over):
    kw = dict(W=P.W, H=P.H)
    kw.update(over)
    W, H = kw.pop("W"), kw.pop("H")
    return quantease.leanquant(W, H, **kw)


@pytest.mark.parametrize(
    "over,message",
    [
        (dict(W=np.ones(8, np.float32)), "W must be a 2-D array"),
        (dict(W=np.ones((8, 32), np.int32)), "W must be a real floating-point array"),
        (
            dict(W=np.where(np.arange(256).reshape(8, 32) == 7, np.nan, P.W)),
            "W contains NaN or Inf (first at row 0, column 7)",
        ),
        (dict(W=np.zeros((0, 32), np.float32), H=np.eye(32)), "W must have at least one row and one column"),
        (dict(H=np.eye(31)), "H must be (32, 32) to match W's 32 columns, got (31, 31)"),
        (dict(H=np.triu(np.ones((32, 32)))), "H must be symmetric"),
        (dict(bits=1), "bits must be an integer in 2..8, got 1"),
        (dict(bits=4.0), "bits must be an integer in 2..8, got 4.0"),
        (dict(group_size=5), "group_size must be -1 or a positive divisor of cols=32, got 5"),
        (dict(grid="uniform"), "grid must be one of 'nonuniform', 'affine', got 'uniform'"),
        (dict(exponent=-1.0), "exponent must be a finite number >= 0, got -1.0"),
        (dict(exponent=np.inf), "exponent must be a finite number >= 0, got inf"),
        (dict(damp=-0.1), "damp must be a finite number >= 0, got -0.1"),
        (dict(block_size=0), "block_size must be a positive integer, got 0"),
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
        (dict(kmeans_iters=0), "kmeans_iters must be a positive integer, got 0"),
        (dict(grid_steps=0), "grid_steps must be a positive integer, got 0"),
        (dict(act_order=1), "act_order must be True or False, got 1"),
        (dict(sym=True), "sym must be False for leanquant"),
    ],
)
def test_messages(over, message):
    with raises(message):
        call(**over)


def test_core_messages():
    # the binding checks too (for callers of quantease._core)
    from quantease import _core

    kw = dict(
        bits=4,
        grid="nonuniform",
        exponent=4.0,
        damp=0.1,
        act_order=True,
        group_size=-1,
        block_size=128,
        seed=0,
        kmeans_iters=100,
        grid_steps=2048,
    )
    with raises("grid must be one of 'nonuniform', 'affine', got 'x'"):
        _core.leanquant(P.W, P.H, **{**kw, "grid": "x"})
    with raises("exponent must be a finite number >= 0, got -2"):
        _core.leanquant(P.W, P.H, **{**kw, "exponent": -2.0})
    with raises("H must be (32, 32) to match W's 32 columns, got (8, 8)"):
        _core.leanquant(P.W, np.eye(8, dtype=np.float32), **kw)
    with raises("weights must be (32,) to match values' 32 columns, got (31,)"):
        _core.weighted_kmeans(P.W, np.ones(31), k=4)
    with raises("k must be an integer in 2..256, got 1"):
        _core.weighted_kmeans(P.W, np.ones(32), k=1)


def test_unknown_keyword_and_positional_options():
    with pytest.raises(TypeError):
        call(group=8)
    with pytest.raises(TypeError):
        quantease.leanquant(P.W, P.H, 4)


# --- determinism, threads, GIL -----------------------------------------------------------------------------------


def test_same_seed_same_result_other_seed_other_codebook():
    p = problems.llm_like(16, 64, seed=9)
    a = quantease.leanquant(p.W, p.H, bits=4, seed=3)
    b = quantease.leanquant(p.W, p.H, bits=4, seed=3)
    c = quantease.leanquant(p.W, p.H, bits=4, seed=4)
    for f in ("weight", "codes", "codebook"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.codebook, c.codebook)


THREADS = """
    import hashlib, json
    import numpy as np
    import quantease, problems
    p = problems.llm_like(200, 384, seed=7)
    out = {}
    for name, kw in [("nu4", dict(bits=4)), ("nu3_g64", dict(bits=3, group_size=64)),
                     ("nu5_noact", dict(bits=5, act_order=False)),
                     ("affine", dict(bits=3, grid="affine", grid_steps=256)),
                     ("affine_g64", dict(bits=4, grid="affine", group_size=64, grid_steps=128))]:
        r = quantease.leanquant(p.W, p.H, **kw)
        h = hashlib.sha256()
        for a in (r.weight, r.codes, r.codebook, r.scales, r.zeros, r.info["grid_error"]):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr(r.loss).encode())
        out[name] = h.hexdigest()
    print(json.dumps(out))
"""


def test_results_identical_for_1_and_2_threads():
    assert json.loads(run_python(THREADS, threads=1)) == json.loads(run_python(THREADS, threads=2))


def test_python_keeps_running_during_a_solve():
    assert_python_keeps_running(
        "p = problems.random_problem(512, 768, n=1536, seed=3)", "quantease.leanquant(p.W, p.H, bits=4)"
    )


# --- export ---------------------------------------------------------------------------------------------------------


def test_export_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    from quantease import export

    p = problems.llm_like(32, 128, seed=1)
    layers = {
        "nu": quantease.leanquant(p.W, p.H, bits=4),
        "nu_g32": quantease.leanquant(p.W, p.H, bits=3, group_size=32),
        "affine": quantease.leanquant(p.W, p.H, bits=4, grid="affine", group_size=32, grid_steps=64),
    }
    export.save_quantease(tmp_path / "q.safetensors", layers, dtype="float32")
    back = export.load_quantease_results(tmp_path / "q.safetensors")
    for name, r in layers.items():
        b, _ = back[name]
        np.testing.assert_array_equal(b.weight, r.weight)
        np.testing.assert_array_equal(b.codes, r.codes)
        if r.codebook is not None:
            np.testing.assert_array_equal(b.codebook, r.codebook)
    # a codebook has no GPTQ layout; the affine grid has
    with pytest.raises(ValueError, match="non-uniform codebook"):
        export.save_gptq(tmp_path / "g", {"nu": layers["nu"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 scales: the export differs within gptq_deviation
        export.save_gptq(tmp_path / "g", {"affine": layers["affine"]}, checkpoint_format="gptq_v2")
    ((b, _),) = export.load_gptq_results(tmp_path / "g").values()
    np.testing.assert_allclose(b.weight, layers["affine"].weight, atol=export.gptq_deviation(layers["affine"]) + 1e-7)
