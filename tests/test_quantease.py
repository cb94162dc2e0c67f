"""QuantEase: agreement with the NumPy oracle, the optimisation properties (monotone quantized sweeps,
coordinate-wise optimality at convergence, never worse than GPTQ from its result), the outlier variant,
dead columns / groups / act-order / sym, threads, the GIL, and input handling."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest

import problems
import quantease
from reference import quantease as oracle
from reference.gptq import layer_loss as ref_loss
from subprocess_run import assert_python_keeps_running, run_python

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def grid_values(res, r, j):
    """All grid points of entry (r, j) of a result (affine grid)."""
    g = res.g_idx[j]
    maxq = 2**res.bits - 1
    return res.scales[r, g] * (np.arange(maxq + 1, dtype=np.float32) - res.zeros[r, g])


def best_single_move(p, res, points=None):
    """(the most any single entry moved to another point of its grid lowers the objective (<= 0), the objective),
    exhaustively: f(Ŵ + e_rj t) - f(Ŵ) = t^2 H_jj - 2 t R_rj with R = (W - Ŵ) H. points(res, r, j): the grid
    values entry (r, j) may take (default: its affine grid)."""
    points = points or grid_values
    H = p.H.astype(np.float64)
    D = p.W.astype(np.float64) - res.weight.astype(np.float64)
    R = D @ H
    f = float(np.sum(R * D))
    worst = 0.0
    for r in range(res.weight.shape[0]):
        for j in range(res.weight.shape[1]):
            t = points(res, r, j).astype(np.float64) - res.weight[r, j]
            worst = min(worst, float(np.min(t * t * H[j, j] - 2 * t * R[r, j])))
    return worst, f


# ------------------------------------------------------------------------------------------ the oracle

ORACLE_CASES = {
    "default": dict(),
    "no_relax": dict(relaxed=False),
    "groups_act": dict(group_size=16),
    "groups_no_act": dict(group_size=32, act_order=False),
    "sym": dict(sym=True, act_order=False),
    "sym_groups": dict(sym=True, group_size=32),
    "rtn_init": dict(init="rtn"),
    "gptq_init": dict(init="gptq"),
    "tol": dict(tol=1e-2, relaxed=False),
    "bits2": dict(bits=2),
    "outliers": dict(outliers=0.02),
    "outliers_groups": dict(outliers=0.01, group_size=32, sym=True),
    "outliers_structured": dict(outliers=0.05, outlier_structure="structured"),
    "outliers_structured_groups": dict(outliers=0.1, outlier_structure="structured", group_size=16),
}


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
@pytest.mark.parametrize("kind", ["llm_like", "dead_columns"])
def test_matches_oracle(case, kind):
    kw = dict(bits=3, iters=8)
    kw.update(ORACLE_CASES[case])
    p = problems.make(kind, 24, 64, seed=3)
    res = quantease.quantease(p.W, p.H, **kw)
    okw = dict(kw)
    if kw.get("init") == "gptq":
        g = quantease.gptq(
            p.W,
            p.H,
            bits=kw["bits"],
            group_size=kw.get("group_size", -1),
            sym=kw.get("sym", False),
            act_order=kw.get("act_order", True),
        )
        okw["start"] = dict(codes=g.codes, scales=g.scales, zeros=g.zeros)
    if kw.get("outliers"):
        okw["eta"] = res.info["eta"]
    ref = oracle.quantease(p.W, p.H, **okw)
    # Same codes up to float round-off at ties: a flipped tie may move a handful of later entries.
    assert problems.code_agreement(res.codes, ref["codes"]) >= 0.99
    n = min(res.iters, ref["sweeps"])
    np.testing.assert_allclose(res.loss_history[:n], ref["loss_history"][:n], rtol=2e-4)
    assert res.info["quantized"][:n] == ref["quantized"][:n]
    if np.array_equal(res.codes, ref["codes"]):
        assert res.iters == ref["sweeps"]
        np.testing.assert_allclose(res.weight, ref["weight"], rtol=1e-6, atol=1e-7)
        assert res.loss == pytest.approx(ref_loss(p.W, ref["weight"], p.H), rel=1e-6)
    if kw.get("outliers"):
        np.testing.assert_array_equal(res.outliers.to_dense() != 0, ref["mask"] & (ref["S"] != 0))


def test_beta_is_the_best_unconstrained_column():
    """The oracle's β (the formula every sweep uses) minimises f along column j: the normal equations."""
    p = problems.llm_like(8, 32, seed=1)
    rng = np.random.default_rng(0)
    W, S = p.W.astype(np.float64), p.H.astype(np.float64)
    W_hat = W + 0.01 * rng.standard_normal(W.shape)
    for j in (0, 7, 31):
        b = oracle.beta(W, W_hat, S, j)
        for eps in (1e-3, -1e-3):
            moved = W_hat.copy()
            moved[:, j] = b
            f_b = oracle.objective(W, moved, S)
            moved[:, j] = b + eps
            assert oracle.objective(W, moved, S) > f_b


# ----------------------------------------------------------------------------- optimisation properties


def _problem_set():
    out = []
    for seed in range(3):
        for kind in ("random", "llm_like", "dead_columns", "rank_deficient", "zero_rows"):
            out.append(problems.make(kind, 32, 96, seed=seed))
    return out


PROBLEM_SET = _problem_set()


@pytest.mark.parametrize(
    "opts",
    [dict(bits=3), dict(bits=4, group_size=32), dict(bits=2, sym=True), dict(bits=3, relaxed=False, act_order=False)],
    ids=str,
)
def test_objective_never_increases_across_quantized_sweeps(opts):
    for p in PROBLEM_SET:
        res = quantease.quantease(p.W, p.H, iters=12, **opts)
        h, q = res.loss_history, res.info["quantized"]
        assert len(h) == res.iters == len(q)
        for i in range(1, len(h)):
            if q[i] and q[i - 1]:  # a quantized sweep from an on-grid point can only lower f
                assert h[i] <= h[i - 1] * (1 + 1e-6) + 1e-12, (p, i, h[i - 1], h[i])
        if not opts.get("relaxed", True):
            assert all(q)
        # the returned point is the best on-grid iterate, and loss_history tracks the exact objective
        best = min(h[i] for i in range(len(h)) if q[i])
        assert res.loss == pytest.approx(best, rel=1e-4, abs=1e-9)
        # (a quantized sweep continues the best point even where float32 G reports a last-digit rise)
        assert res.loss_history[res.info["best_sweep"]] == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize(
    "opts",
    [
        dict(bits=3),
        dict(bits=2, group_size=8),
        dict(bits=4, sym=True),
        dict(bits=3, init="gptq"),
        dict(bits=3, act_order=False, relaxed=False),
    ],
    ids=str,
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converged_result_is_coordinatewise_optimal(opts, seed):
    """Exhaustively: no single entry moved to any other point of its grid lowers the objective."""
    p = problems.make(["llm_like", "dead_columns", "random"][seed], 12, 32, seed=seed)
    res = quantease.quantease(p.W, p.H, **opts)
    assert res.info["converged"]
    worst, f = best_single_move(p, res)
    assert worst >= -1e-6 * f - 1e-12, (worst, f)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(group_size=32),
        dict(sym=True),
        dict(act_order=False),
        dict(group_size=16, act_order=False, sym=True),
    ],
    ids=str,
)
def test_gptq_init_never_worse_than_gptq(bits, opts):
    for p in PROBLEM_SET[::2]:
        g = quantease.gptq(
            p.W,
            p.H,
            bits=bits,
            act_order=opts.get("act_order", True),
            **{k: v for k, v in opts.items() if k != "act_order"},
        )
        r = quantease.quantease(p.W, p.H, bits=bits, init="gptq", iters=6, **opts)
        assert r.loss <= g.loss, (p, r.loss, g.loss)
        np.testing.assert_array_equal(r.scales, g.scales)  # GPTQ's grid
        np.testing.assert_array_equal(r.g_idx, g.g_idx)


def _llm_like_cases():
    sys.path.insert(0, BENCH_DIR)
    try:
        from synthetic import llm_like_problem
    finally:
        sys.path.remove(BENCH_DIR)
    cases = [(f"tests.llm_like[{s}]", problems.llm_like(48, 192, seed=s)) for s in range(3)]
    for s in range(3):
        W, H = llm_like_problem(64, 256, seed=s)
        cases.append((f"bench.synthetic[{s}]", problems.Problem("synthetic", W, H)))
    return cases


@pytest.mark.parametrize("bits", [3, 4])
def test_below_gptq_on_llm_like_problems(bits):
    below, below_w = [], []
    for name, p in _llm_like_cases():
        g = quantease.gptq(p.W, p.H, bits=bits, act_order=True)
        r = quantease.quantease(p.W, p.H, bits=bits, init="gptq")
        below.append(r.loss < g.loss)
        if name.startswith("tests."):
            below_w.append(quantease.quantease(p.W, p.H, bits=bits).loss < g.loss)
    assert sum(below) >= len(below) - 1, below
    # from W (the official default) it wins on the correlated tests problems as well; on bench/synthetic's
    # strongly coupled low-rank H it does not (9-19 % above GPTQ there; bench/bench_quantease.py)
    assert sum(below_w) >= 2, below_w


def test_tol_stops_early_and_counts_sweeps():
    p = problems.llm_like(32, 96, seed=4)
    full = quantease.quantease(p.W, p.H, bits=3, relaxed=False, iters=30)
    early = quantease.quantease(p.W, p.H, bits=3, relaxed=False, iters=30, tol=0.05)
    assert early.info["stopped_by_tol"] and early.iters < full.iters
    assert len(early.loss_history) == early.iters
    h = early.loss_history
    assert h[-2] - h[-1] < 0.05 * h[-2]
    assert all(h[i - 1] - h[i] >= 0.05 * h[i - 1] for i in range(1, len(h) - 1))


def test_codes_grid_and_groups():
    p = problems.llm_like(24, 64, seed=5)
    for kw in (dict(), dict(group_size=16), dict(group_size=16, act_order=False), dict(sym=True)):
        r = quantease.quantease(p.W, p.H, bits=3, iters=5, **kw)
        g = quantease.gptq(
            p.W, p.H, bits=3, act_order=kw.get("act_order", True), **{k: v for k, v in kw.items() if k != "act_order"}
        )
        assert r.codes.dtype == np.uint8 and r.codes.max() <= 7
        np.testing.assert_array_equal(r.grid_weight(), r.weight)
        np.testing.assert_array_equal(r.g_idx, g.g_idx)
        if kw.get("group_size", -1) == -1:  # row grid fitted once from W: RTN's
            rt = quantease.rtn(p.W, bits=3, sym=kw.get("sym", False))
            np.testing.assert_array_equal(r.scales, rt.scales)
            np.testing.assert_array_equal(r.zeros, rt.zeros)
        if kw.get("act_order", True):
            np.testing.assert_array_equal(r.perm, np.argsort(-np.diag(p.H), kind="stable"))
        else:
            assert r.perm is None


def test_dead_columns_rounded_from_current_value():
    p = problems.dead_columns(16, 64, seed=2)
    dead = p.info["dead"]
    r = quantease.quantease(p.W, p.H, bits=4, iters=6)
    rt = quantease.rtn(p.W, bits=4)  # init = W, row grid: a dead column stays W's rounding
    np.testing.assert_array_equal(r.codes[:, dead], rt.codes[:, dead])
    gi = quantease.gptq(p.W, p.H, bits=4, act_order=True)
    rg = quantease.quantease(p.W, p.H, bits=4, iters=6, init="gptq")
    np.testing.assert_array_equal(rg.codes[:, dead], gi.codes[:, dead])


# --------------------------------------------------------------------------------------------- outliers


@pytest.mark.parametrize("seed", [0, 1])
def test_outliers_far_below_plain_at_3_bits(seed):
    p = problems.llm_like(48, 192, seed=seed)
    plain = quantease.quantease(p.W, p.H, bits=3)
    res = quantease.quantease(p.W, p.H, bits=3, outliers=0.01)
    k = round(0.01 * p.W.size)
    assert res.outliers.nnz == k and res.info["outlier_count"] == k
    assert res.outlier_fraction == pytest.approx(k / p.W.size)
    assert res.loss < 0.6 * plain.loss, (res.loss, plain.loss)
    np.testing.assert_array_equal(res.dense_weight(), res.weight)
    assert res.loss == pytest.approx(quantease.layer_loss(p.W, res.grid_weight() + res.outliers.to_dense(), p.H))
    assert res.outliers.values.dtype == np.float32 and res.outliers.indptr[-1] == k
    for r in range(p.W.shape[0]):  # CSR: increasing columns within each row
        cols = res.outliers.indices[res.outliers.indptr[r] : res.outliers.indptr[r + 1]]
        assert np.all(np.diff(cols) > 0)


def test_structured_outliers_are_whole_columns():
    p = problems.llm_like(32, 128, seed=2)
    res = quantease.quantease(p.W, p.H, bits=3, outliers=0.05, outlier_structure="structured", iters=8)
    k = round(0.05 * 128)
    assert res.info["outlier_count"] == k and res.outliers.nnz == k * 32
    cols = np.unique(res.outliers.indices)
    assert cols.size == k
    plain = quantease.quantease(p.W, p.H, bits=3, iters=8)
    assert res.loss < plain.loss


def test_iht_step_size_from_lambda_max():
    p = problems.llm_like(16, 64, seed=3)
    lam = np.linalg.eigvalsh(p.H.astype(np.float64))[-1]
    for step in (1.0, 0.5):
        res = quantease.quantease(p.W, p.H, bits=3, outliers=0.01, outlier_step=step, iters=4)
        assert res.info["lambda_max"] == pytest.approx(lam, rel=1e-4)
        assert res.info["eta"] == pytest.approx(step / (2 * lam), rel=1e-4)


@pytest.mark.parametrize("structure", ["unstructured", "structured"])
def test_zero_outliers_reproduce_plain(structure):
    p = problems.llm_like(24, 64, seed=6)
    plain = quantease.quantease(p.W, p.H, bits=3, group_size=16)
    zero = quantease.quantease(p.W, p.H, bits=3, group_size=16, outliers=0.0, outlier_structure=structure)
    # a positive fraction that rounds to k = 0 runs the whole outlier machinery with an empty S
    tiny = quantease.quantease(p.W, p.H, bits=3, group_size=16, outliers=1e-6, outlier_structure=structure)
    for r in (zero, tiny):
        np.testing.assert_array_equal(r.codes, plain.codes)
        np.testing.assert_array_equal(r.weight, plain.weight)
        np.testing.assert_array_equal(r.loss_history, plain.loss_history)
    assert zero.outliers is None and tiny.outliers.nnz == 0


# ------------------------------------------------------------------------------- the fast paths (speed)


def _core_run(p, **over):
    from quantease import _core

    kw = dict(
        bits=3,
        group_size=-1,
        sym=False,
        act_order=True,
        iters=9,
        init="w",
        relaxed=True,
        tol=0.0,
        outliers=0.0,
        outlier_structure="unstructured",
        outlier_step=1.0,
        block_size=32,
    )
    kw.update(over)
    return _core.quantease(p.W, p.H, **kw)


@pytest.mark.parametrize("seed", [0, 1])
def test_relaxed_pair_matches_plain_sweeps(seed):
    """A relaxed sweep and the quantized sweep after it run as a pair on the G of the on-grid point
    (half-flop relaxed sweep on a scratch copy, sparse update by the change of grid point). A refresh period
    that never comes due switches the pair off: both must follow the same iterates up to float32 round-off."""
    p = problems.llm_like(300, 160, seed=seed)  # three row panels, five column blocks
    pair = _core_run(p)
    plain = _core_run(p, refresh_every=10**6)
    assert plain["refreshes"] == 0 and pair["quantized"] == plain["quantized"]
    assert not all(pair["quantized"][:9])
    np.testing.assert_allclose(pair["loss_history"][:9], plain["loss_history"][:9], rtol=1e-4)
    assert problems.code_agreement(pair["codes"], plain["codes"]) >= 0.99
    # the pair's quantized sweep moves G by the entries whose grid point changed only: far fewer than all
    after_relaxed = [i for i in range(1, 9) if pair["quantized"][i] and not pair["quantized"][i - 1]]
    assert after_relaxed and all(pair["moves"][i] < pair["changes"][i] for i in after_relaxed)
    assert all(plain["moves"][i] == plain["changes"][i] for i in after_relaxed)


def test_sweep_statistics():
    p = problems.llm_like(40, 96, seed=2)
    res = quantease.quantease(p.W, p.H, bits=3, iters=10)
    n = res.iters
    assert len(res.info["moves"]) == len(res.info["sweep_times"]) == n
    assert all(t >= 0 for t in res.info["sweep_times"])
    # a plain quantized sweep after a quantized one moves G by exactly the entries it changed
    q = res.info["quantized"]
    for i in range(1, n):
        if q[i] and q[i - 1]:
            assert res.info["moves"][i] == res.info["changes"][i]


# ----------------------------------------------------------------------------------- threads and the GIL

DIGESTS = """
    import hashlib, json
    import numpy as np
    import quantease, problems

    def digest(res):
        h = hashlib.sha256()
        for a in (res.weight, res.codes, res.scales, res.zeros, res.loss_history):
            h.update(np.ascontiguousarray(a).tobytes())
        if res.outliers is not None:
            h.update(res.outliers.values.tobytes()); h.update(res.outliers.indices.tobytes())
        return h.hexdigest()

    p = problems.llm_like(200, 384, seed=7)   # several row panels and column blocks
    out = {}
    for name, kw in [("plain", dict(iters=8)), ("g64_sym", dict(iters=6, group_size=64, sym=True)),
                     ("gptq", dict(iters=4, init="gptq")), ("outl", dict(iters=5, outliers=0.01)),
                     ("struct", dict(iters=4, outliers=0.02, outlier_structure="structured")),
                     ("refit", dict(iters=4, refit=2, group_size=64))]:
        out[name] = digest(quantease.quantease(p.W, p.H, bits=3, **kw))
    print(json.dumps(out))
"""


def test_results_identical_for_1_and_2_threads():
    assert json.loads(run_python(DIGESTS, threads=1)) == json.loads(run_python(DIGESTS, threads=2))


def test_gil_released_during_the_solve():
    assert_python_keeps_running(
        "p = problems.random_problem(384, 512, n=1024, seed=3)", "quantease.quantease(p.W, p.H, iters=6)"
    )


# ------------------------------------------------------------------------------------------------ inputs

P = problems.llm_like(8, 32, seed=0)


def raises(fragment):
    return pytest.raises(ValueError, match=re.escape(fragment))


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(bits=9), "bits must be an integer in 2..8, got 9"),
        (dict(group_size=5), "group_size must be -1 or a positive divisor of cols=32, got 5"),
        (dict(iters=0), "iters must be a positive integer, got 0"),
        (dict(iters=2.5), "iters must be a positive integer, got 2.5"),
        (dict(block_size=0), "block_size must be a positive integer, got 0"),
        (dict(init="zeros"), "init must be one of 'w', 'rtn', 'gptq', 'leanquant', got 'zeros'"),
        (dict(tol=-1.0), "tol must be a finite number >= 0, got -1.0"),
        (dict(tol=float("nan")), "tol must be a finite number >= 0, got nan"),
        (dict(outliers=1.0), "outliers must be a fraction in [0, 1), got 1.0"),
        (dict(outliers=-0.1), "outliers must be a fraction in [0, 1), got -0.1"),
        (dict(outliers="1%"), "outliers must be a fraction in [0, 1), got '1%'"),
        (dict(outlier_structure="rows"), "outlier_structure must be one of 'unstructured', 'structured', got 'rows'"),
        (dict(outlier_step=0.0), "outlier_step must be a finite number > 0, got 0.0"),
        (dict(sym=1), "sym must be True or False, got 1"),
        (dict(act_order=None), "act_order must be True or False, got None"),
        (dict(relaxed="yes"), "relaxed must be True or False, got 'yes'"),
        (dict(init="gptq", outliers=0.01), "init='gptq' cannot be combined with outliers > 0"),
    ],
)
def test_option_messages(over, message):
    with raises(message):
        quantease.quantease(P.W, P.H, **over)


def test_array_messages():
    with raises("W must be a 2-D array (rows x cols), got shape (32,)"):
        quantease.quantease(P.W[0], P.H)
    with raises("W must be a real floating-point array"):
        quantease.quantease(P.W.astype(np.int32), P.H)
    W = P.W.copy()
    W[2, 5] = np.nan
    with raises("W contains NaN or Inf (first at row 2, column 5)"):
        quantease.quantease(W, P.H)
    with raises("H must be (32, 32) to match W's 32 columns, got (31, 31)"):
        quantease.quantease(P.W, P.H[:31, :31])
    H = P.H.copy()
    H[0, 1] += 1.0
    with raises("H must be symmetric"):
        quantease.quantease(P.W, H)
    with raises("W must have at least one row and one column"):
        quantease.quantease(np.zeros((0, 32), np.float32), P.H)


def test_core_binding_checks_too():
    from quantease import _core

    kw = dict(
        bits=3,
        group_size=-1,
        sym=False,
        act_order=True,
        iters=2,
        init="w",
        relaxed=True,
        tol=0.0,
        outliers=0.0,
        outlier_structure="unstructured",
        outlier_step=1.0,
        block_size=16,
    )
    for over, message in [
        (dict(outliers=1.5), "outliers must be a fraction in [0, 1), got 1.5"),
        (dict(init="x"), "init must be one of 'w', 'rtn', 'gptq', 'leanquant', got 'x'"),
        (dict(iters=0), "iters must be a positive integer, got 0"),
    ]:
        with raises(message):
            _core.quantease(P.W, P.H, **{**kw, **over})


def test_inputs_unchanged_and_dtypes():
    W64 = P.W.astype(np.float64)
    H64 = P.H.astype(np.float64)
    Wf = np.asfortranarray(P.W)
    copies = [a.copy() for a in (W64, H64, Wf)]
    ref = quantease.quantease(P.W, P.H, bits=3, iters=4, outliers=0.02)
    for W in (W64, Wf, P.W.astype(np.float16).astype(np.float32)):
        r = quantease.quantease(W, P.H, bits=3, iters=4, outliers=0.02)
        if W.dtype != np.float16 and W is not None and np.array_equal(np.asarray(W, np.float32), P.W):
            np.testing.assert_array_equal(r.codes, ref.codes)
            np.testing.assert_array_equal(r.weight, ref.weight)
    r64 = quantease.quantease(P.W, H64, bits=3, iters=4)
    assert r64.iters >= 1
    for a, c in zip((W64, H64, Wf), copies):
        np.testing.assert_array_equal(a, c)


def test_result_fields():
    r = quantease.quantease(P.W, P.H, bits=4, iters=5)
    assert r.method == "quantease" and r.bits == 4 and r.loss_history.dtype == np.float64
    assert r.iters == len(r.loss_history) and r.outliers is None and r.outlier_fraction is None
    assert set(r.info["phase_seconds"]) >= {"prepare", "init", "sweeps", "output"}
    np.testing.assert_allclose(
        r.info["rel_history"] * quantease.layer_loss(P.W, 0 * P.W, P.H), r.loss_history, rtol=1e-4
    )
