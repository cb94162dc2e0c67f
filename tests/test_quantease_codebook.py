"""QuantEase on codebook grids (a given per-row / per-group codebook, or LeanQuant's with init="leanquant"):
one sweep and a relaxed/quantized pair against a tiny NumPy oracle of CD with nearest-level rounding, the tie
rule, coordinate-wise optimality at convergence (exhaustive), monotone quantized sweeps, never worse than
LeanQuant from its result, codes/codebook reproducing the weight, threads, and input handling."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import problems
import quantease
import test_quantease
from quantease import _core
from subprocess_run import run_python

# ---------------------------------------------------------------------------------------------- helpers


def levels_of(res, r, c):
    """The codebook levels of entry (r, c) (original column order) of a codebook result."""
    cb = res.codebook
    return cb[r] if cb.ndim == 2 else cb[r, res.g_idx[c]]


def best_single_move(p, res):
    """Exhaustive single-entry moves to another level of the entry's codebook (see test_quantease)."""
    return test_quantease.best_single_move(p, res, points=levels_of)


def random_codebook(W, bits, group_size=-1, seed=0):
    """Sorted random levels spanning each row's (static group's) range, float32."""
    rng = np.random.default_rng(seed)
    rows, cols = W.shape
    gs = cols if group_size == -1 else group_size
    groups = cols // gs
    cb = np.empty((rows, groups, 1 << bits), dtype=np.float32)
    for g in range(groups):
        x = W[:, g * gs : (g + 1) * gs]
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        cb[:, g] = np.sort(lo + (hi - lo) * rng.uniform(size=(rows, 1 << bits)), axis=1)
    return cb[:, 0] if group_size == -1 else cb


def nearest_level(x, levels):
    """Code of the nearest level (ascending levels), a value on a float32 midpoint taking the lower level."""
    lv = levels.astype(np.float32)
    mids = np.float32(0.5) * (lv[:-1] + lv[1:])
    return int(np.searchsorted(mids, np.float32(x), side="left"))


def oracle_sweeps(W, H, codebook, group_size, act_order, kinds, start_codes=None):
    """CD from the definition, float64: for each sweep kind ("q" quantized, "r" relaxed) visit the columns in
    processing order (diag(H) descending, dead counted as 1, stable) and set ŵ_j to β_j (relaxed) or its
    nearest level (quantized), β_j = ŵ_j + ((W - Ŵ) H)_j / H_jj (dead column: β_j = ŵ_j). Start: Ŵ = W, or
    the levels of ``start_codes``. Groups: original columns c // group_size. Returns per sweep (f, codes)."""
    W64, H64 = W.astype(np.float64), H.astype(np.float64)
    rows, cols = W.shape
    cb = codebook if codebook.ndim == 3 else codebook[:, None, :]
    grp = np.zeros(cols, dtype=np.int64) if group_size == -1 else np.arange(cols) // group_size
    d = np.diag(H64)
    dead = d == 0
    perm = np.argsort(-np.where(dead, 1.0, d), kind="stable") if act_order else np.arange(cols)
    codes = np.zeros((rows, cols), dtype=np.int64)
    if start_codes is None:
        What = W64.copy()
    else:
        codes[:] = start_codes
        What = np.take_along_axis(cb[:, grp, :], codes[:, :, None], axis=2)[:, :, 0].astype(np.float64)
    out = []
    for kind in kinds:
        for j in perm:
            beta = What[:, j] if dead[j] else What[:, j] + ((W64 - What) @ H64[:, j]) / d[j]
            if kind == "r":
                What[:, j] = beta
                continue
            for r in range(rows):
                lv = cb[r, grp[j]]
                codes[r, j] = nearest_level(beta[r], lv)
                What[r, j] = lv[codes[r, j]]
        D = W64 - What
        out.append((float(np.sum((D @ H64) * D)), codes.copy() if kind == "q" else None))
    return out


def core_run(W, H, **kw):
    """The compiled solver with the polish sweeps off (the schedule alone), as the oracle runs it."""
    args = dict(
        bits=3,
        group_size=-1,
        sym=False,
        act_order=True,
        iters=1,
        init="w",
        relaxed=True,
        tol=0.0,
        outliers=0.0,
        outlier_structure="unstructured",
        outlier_step=1.0,
        block_size=128,
        polish=False,
    )
    args.update(kw)
    return _core.quantease(np.ascontiguousarray(W, dtype=np.float32), H, **args)


# ------------------------------------------------------------------------------------------- the oracle

ORACLE_CASES = {
    "row": dict(),
    "row_no_act": dict(act_order=False),
    "groups": dict(group_size=16),
    "groups_no_act": dict(group_size=32, act_order=False),
    "bits2": dict(bits=2),
    "bits4_small_blocks": dict(bits=4, block_size=8),
}


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
@pytest.mark.parametrize("kind", ["llm_like", "dead_columns"])
def test_one_sweep_matches_numpy_oracle(case, kind):
    kw = dict(bits=3)
    kw.update(ORACLE_CASES[case])
    p = problems.make(kind, 24, 64, seed=3)
    gs, act = kw.get("group_size", -1), kw.get("act_order", True)
    cb = random_codebook(p.W, kw["bits"], gs, seed=1)
    out = core_run(p.W, p.H, codebook=cb, iters=1, **kw)
    ((f, codes),) = oracle_sweeps(p.W, p.H, cb, gs, act, "q")
    assert out["sweeps"] == 1
    assert problems.code_agreement(out["codes"], codes) >= 0.99
    assert out["loss_history"][0] == pytest.approx(f, rel=2e-4)
    np.testing.assert_array_equal(out["codebook"].reshape(cb.shape), cb)


@pytest.mark.parametrize("init", ["w", "leanquant"])
@pytest.mark.parametrize("gs", [-1, 16])
def test_relaxed_pair_matches_numpy_oracle(init, gs):
    """Sweeps quantized, relaxed, quantized (the paired relaxed/requantize path) against the oracle."""
    p = problems.llm_like(24, 64, seed=4)
    start = None
    if init == "leanquant":
        lq = quantease.leanquant(p.W, p.H, bits=3, group_size=gs)
        cb, start = lq.codebook, lq.codes
        out = core_run(p.W, p.H, init="leanquant", group_size=gs, iters=3)
    else:
        cb = random_codebook(p.W, 3, gs, seed=2)
        out = core_run(p.W, p.H, codebook=cb, group_size=gs, iters=3)
    ref = oracle_sweeps(p.W, p.H, cb, gs, True, "qrq", start_codes=start)
    assert out["quantized"] == [True, False, True]
    np.testing.assert_allclose(out["loss_history"], [f for f, _ in ref], rtol=2e-4)
    best = min((0, 2), key=lambda i: ref[i][0])
    if init == "leanquant" and min(ref[0][0], ref[2][0]) >= quantease.layer_loss(p.W, lq.weight, p.H):
        assert out["kept_init"]
    else:
        assert problems.code_agreement(out["codes"], ref[best][1]) >= 0.99


def test_ties_take_the_lower_level():
    """Diagonal H: the columns decouple and CD from W is nearest-level rounding of W; values exactly on a
    midpoint (0.5, 1.5, 2.5 between levels 0, 1, 2, 3) take the lower level, as LeanQuant."""
    W = np.array([[0.5, 1.5, 2.5, 0.49, 0.51, 2.9]] * 2, dtype=np.float32)
    H = np.diag(np.arange(1, 7, dtype=np.float32))
    cb = np.tile(np.arange(4, dtype=np.float32), (2, 1))
    res = quantease.quantease(W, H, bits=2, codebook=cb)
    np.testing.assert_array_equal(res.codes, [[0, 1, 2, 0, 1, 3]] * 2)
    assert res.info["converged"]


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_diagonal_h_rounds_to_the_nearest_level(bits):
    """Diagonal H: CD from W is nearest-level rounding of W, for every codebook size (the binary search)."""
    rng = np.random.default_rng(bits)
    W = rng.standard_normal((6, 40)).astype(np.float32)
    H = np.diag(rng.uniform(0.5, 2.0, 40)).astype(np.float32)
    cb = np.sort(rng.standard_normal((6, 1 << bits)), axis=1).astype(np.float32)
    res = quantease.quantease(W, H, bits=bits, codebook=cb)
    np.testing.assert_array_equal(res.codes, [[nearest_level(w, cb[r]) for w in W[r]] for r in range(6)])


# ----------------------------------------------------------------------------- optimisation properties


def _problem_set():
    return [
        problems.make(kind, 32, 96, seed=seed)
        for seed in range(3)
        for kind in ("random", "llm_like", "dead_columns", "rank_deficient", "zero_rows")
    ]


PROBLEM_SET = _problem_set()


@pytest.mark.parametrize(
    "opts",
    [dict(bits=3), dict(bits=4, group_size=32), dict(bits=2, act_order=False), dict(bits=3, relaxed=False)],
    ids=str,
)
@pytest.mark.parametrize("init", ["w", "rtn", "leanquant"])
def test_objective_never_increases_across_quantized_sweeps(opts, init):
    for i, p in enumerate(PROBLEM_SET[::2]):
        kw = dict(opts)
        if init != "leanquant":
            kw["codebook"] = random_codebook(p.W, opts["bits"], opts.get("group_size", -1), seed=i)
        res = quantease.quantease(p.W, p.H, iters=12, init=init, **kw)
        h, q = res.loss_history, res.info["quantized"]
        assert len(h) == res.iters == len(q)
        for k in range(1, len(h)):
            if q[k] and q[k - 1]:  # a quantized sweep from an on-grid point can only lower f
                assert h[k] <= h[k - 1] * (1 + 1e-6) + 1e-12, (p, k, h[k - 1], h[k])
        if not res.info["kept_init"]:  # the returned point is the best on-grid iterate
            best = min(h[k] for k in range(len(h)) if q[k])
            assert res.loss == pytest.approx(best, rel=1e-4, abs=1e-9)
            # a quantized sweep from the best point continues it even where float32 G reports a last-digit
            # rise (quantease.cpp: `continuation`), so the best sweep's f equals the minimum to that noise
            assert res.loss_history[res.info["best_sweep"]] == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize(
    "opts",
    [
        dict(bits=3, init="leanquant"),
        dict(bits=2, group_size=8, init="leanquant"),
        dict(bits=4, act_order=False, init="leanquant"),
        dict(bits=3, init="w"),
        dict(bits=3, group_size=16, init="rtn", relaxed=False),
    ],
    ids=str,
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converged_result_is_coordinatewise_optimal(opts, seed):
    """Exhaustively: no single entry moved to any other level of its codebook lowers the objective."""
    p = problems.make(["llm_like", "dead_columns", "random"][seed], 12, 32, seed=seed)
    kw = dict(opts)
    if opts["init"] != "leanquant":
        kw["codebook"] = random_codebook(p.W, opts["bits"], opts.get("group_size", -1), seed=seed)
    res = quantease.quantease(p.W, p.H, **kw)
    assert res.info["converged"] and not res.info["kept_init"]
    worst, f = best_single_move(p, res)
    assert worst >= -1e-6 * f - 1e-12, (worst, f)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(
    "opts", [dict(), dict(group_size=32), dict(act_order=False), dict(group_size=48, act_order=False)], ids=str
)
def test_leanquant_init_never_worse_than_leanquant(bits, opts):
    strictly = []
    for p in PROBLEM_SET:
        lq = quantease.leanquant(p.W, p.H, bits=bits, **opts)
        r = quantease.quantease(p.W, p.H, bits=bits, init="leanquant", iters=8, **opts)
        assert r.loss <= lq.loss, (p, r.loss, lq.loss)
        np.testing.assert_array_equal(r.codebook, lq.codebook)  # LeanQuant's codebooks, same layout
        np.testing.assert_array_equal(r.g_idx, lq.g_idx)
        assert r.damp == lq.damp
        strictly.append(r.loss < lq.loss)
    # CD improves on LeanQuant's GPTQ-style loop nearly everywhere
    assert np.mean(strictly) >= 0.8, strictly


def test_below_leanquant_on_llm_like_problems():
    """Bigger LLM-like layers, 3 and 4 bits: strictly below LeanQuant on every one, and the median gain."""
    ratios = []
    for seed in range(3):
        p = problems.llm_like(64, 256, seed=seed)
        for bits in (3, 4):
            lq = quantease.leanquant(p.W, p.H, bits=bits)
            r = quantease.quantease(p.W, p.H, bits=bits, init="leanquant")
            ratios.append(r.loss / lq.loss)
    assert max(ratios) < 1.0, ratios
    assert np.median(ratios) < 0.9, ratios


# ------------------------------------------------------------------------------------------- refit


def optimal_levels_gain(p, res):
    """Σ over rows of f(row) − min over its used levels (codes fixed, one codebook per row), float64 lstsq."""
    W, H = p.W.astype(np.float64), p.H.astype(np.float64)
    k = res.codebook.shape[-1]
    gain = 0.0
    for r in range(W.shape[0]):
        A = np.eye(k)[res.codes[r]]  # cols x k one-hot
        used = np.flatnonzero(np.diag(A.T @ H @ A) > 0)
        c = res.codebook[r].astype(np.float64)
        d = W[r] - A @ c
        # f(c + Δ) − f(c) = −2 Δᵀ Aᵀ H d + Δᵀ AᵀHA Δ: the best Δ on the used levels
        Au = A[:, used]
        delta = np.linalg.lstsq(Au.T @ H @ Au, Au.T @ H @ d, rcond=None)[0]
        gain += float(delta @ (Au.T @ H @ d))
    return gain


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_first_step_is_the_exact_level_optimum(seed):
    """The first refit of a converged codebook result gains what the least-squares optimum of the levels
    (codes fixed) gains: one codebook per row, so the C++ closed form is the joint optimum."""
    p = problems.make(["llm_like", "dead_columns", "random"][seed], 16, 64, seed=seed)
    base = quantease.quantease(p.W, p.H, bits=3, init="leanquant")
    assert base.info["converged"] and not base.info["kept_init"]
    r = quantease.quantease(p.W, p.H, bits=3, init="leanquant", refit=1)
    want = optimal_levels_gain(p, base)
    assert r.info["refit_gains"][0] == pytest.approx(want, rel=1e-3)
    assert r.loss <= base.loss - 0.99 * want


@pytest.mark.parametrize(
    "opts",
    [dict(bits=3), dict(bits=4, group_size=32), dict(bits=2, group_size=48, act_order=False), dict(bits=3, init="w")],
    ids=str,
)
def test_refit_lowers_the_loss_and_stays_optimal(opts):
    lower = []
    for i, p in enumerate(PROBLEM_SET[::3]):
        kw = dict(opts)
        kw.setdefault("init", "leanquant")
        if kw["init"] != "leanquant":
            kw["codebook"] = random_codebook(p.W, kw["bits"], kw.get("group_size", -1), seed=i)
        a = quantease.quantease(p.W, p.H, **kw)
        r = quantease.quantease(p.W, p.H, refit=5, **kw)
        assert r.loss <= a.loss * (1 + 1e-6), (p, r.loss, a.loss)
        lower.append(r.loss < a.loss)
        assert all(g >= 0 for g in r.info["refit_gains"]) and r.info["refits"] >= 1
        assert np.all(np.diff(r.codebook, axis=-1) >= 0)  # re-sorted, codes renumbered
        np.testing.assert_array_equal(r.grid_weight(), r.weight)
        assert r.info["converged"]
        h, pol = r.loss_history, r.info["polish"]
        for t in range(1, len(h)):  # the polish/refit sweeps only go down (a refit between two also does)
            if pol[t] and pol[t - 1]:
                assert h[t] <= h[t - 1] * (1 + 1e-6) + 1e-12
        worst, f = best_single_move(p, r)
        assert worst >= -1e-6 * f - 1e-12, (worst, f)
    assert np.mean(lower) >= 0.8, lower


# ------------------------------------------------------------------------------------- the result


@pytest.mark.parametrize(
    "kw", [dict(), dict(group_size=16), dict(group_size=16, act_order=False), dict(act_order=False)], ids=str
)
def test_codes_and_codebook_reproduce_weight(kw):
    p = problems.dead_columns(24, 64, seed=5)
    gs = kw.get("group_size", -1)
    for init in ("w", "rtn", "leanquant"):
        cb = None if init == "leanquant" else random_codebook(p.W, 3, gs, seed=7)[..., ::-1]  # unsorted
        r = quantease.quantease(p.W, p.H, bits=3, iters=5, init=init, codebook=cb, **kw)
        assert r.codes.dtype == np.uint8 and r.codes.max() <= 7
        assert r.scales is None and r.zeros is None and r.codebook.dtype == np.float32
        assert r.codebook.shape == ((24, 8) if gs == -1 else (24, 4, 8))
        assert np.all(np.diff(r.codebook, axis=-1) >= 0)
        if cb is not None:  # the given levels, sorted
            np.testing.assert_array_equal(r.codebook, np.sort(cb, axis=-1))
        np.testing.assert_array_equal(r.grid_weight(), r.weight)
        np.testing.assert_array_equal(r.g_idx, np.arange(64) // gs if gs > 0 else np.zeros(64))  # static groups
        if kw.get("act_order", True):
            d = np.diag(p.H)  # processing order: diag(H) descending, dead columns counted as 1
            np.testing.assert_array_equal(r.perm, np.argsort(-np.where(d == 0, 1, d), kind="stable"))
        else:
            assert r.perm is None
        assert r.loss == pytest.approx(quantease.layer_loss(p.W, r.weight, p.H))
        assert r.info["init"] == init and r.method == "quantease"


def test_rtn_init_is_nearest_level_of_w():
    p = problems.llm_like(16, 64, seed=6)
    cb = random_codebook(p.W, 3, seed=3)
    out = core_run(p.W, p.H, codebook=cb, init="rtn", iters=1)
    # the start point is the row-wise nearest level of W; the one quantized sweep can only lower f from it
    start = np.array([[nearest_level(w, cb[r]) for w in p.W[r]] for r in range(16)])
    f0 = quantease.layer_loss(p.W, np.take_along_axis(cb, start, axis=1), p.H)
    assert out["loss_history"][0] <= f0 * (1 + 1e-6)


def test_input_not_modified():
    p = problems.llm_like(16, 64, seed=8)
    cb = random_codebook(p.W, 3, 16, seed=1)[..., ::-1].astype(np.float64)
    W0, H0, cb0 = p.W.copy(), p.H.copy(), cb.copy()
    quantease.quantease(p.W, p.H, bits=3, group_size=16, codebook=cb)
    np.testing.assert_array_equal(p.W, W0)
    np.testing.assert_array_equal(p.H, H0)
    np.testing.assert_array_equal(cb, cb0)


# ------------------------------------------------------------------------------------------ threads

DIGESTS = """
    import hashlib, json
    import numpy as np
    import quantease, problems

    def digest(res):
        h = hashlib.sha256()
        for a in (res.weight, res.codes, res.codebook, res.g_idx):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr(res.loss).encode())
        h.update(repr(list(res.loss_history)).encode())
        return h.hexdigest()

    p = problems.llm_like(200, 384, seed=7)    # rows > 128: several row panels
    rng = np.random.default_rng(0)
    cb = np.sort(rng.standard_normal((200, 6, 16)).astype(np.float32) * 0.05, axis=-1)
    out = dict(lq=digest(quantease.quantease(p.W, p.H, bits=3, init="leanquant", iters=8)),
               lq_g64=digest(quantease.quantease(p.W, p.H, bits=4, group_size=64, init="leanquant", iters=8)),
               given=digest(quantease.quantease(p.W, p.H, bits=4, group_size=64, codebook=cb, iters=8)),
               refit=digest(quantease.quantease(p.W, p.H, bits=3, group_size=64, init="leanquant", iters=8,
                                                refit=3)))
    print(json.dumps(out))
"""


def test_results_identical_for_1_and_2_threads():
    assert json.loads(run_python(DIGESTS, threads=1)) == json.loads(run_python(DIGESTS, threads=2))


# -------------------------------------------------------------------------------------------- inputs


def _raises(msg, W, H, **kw):
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        quantease.quantease(W, H, **kw)


def test_bad_codebooks_and_options():
    p = problems.llm_like(8, 32, seed=0)
    W, H = p.W, p.H
    cb = random_codebook(W, 3)
    cbg = random_codebook(W, 3, 16)
    _raises(
        "codebook must be (8, 8) (rows x 2^bits) for W of shape (8, 32) and group_size=-1, got (8, 2, 8)",
        W,
        H,
        bits=3,
        codebook=cbg,
    )
    _raises(
        "codebook must be (8, 2, 8) (rows x groups x 2^bits) for W of shape (8, 32) and group_size=16, got (8, 8)",
        W,
        H,
        bits=3,
        group_size=16,
        codebook=cb,
    )
    _raises(
        "codebook must be (8, 8) (rows x 2^bits) for W of shape (8, 32) and group_size=-1, got (7, 8)",
        W,
        H,
        bits=3,
        codebook=cb[:7],
    )
    _raises("codebook must have 2^bits = 16 levels per row for bits=4, got 8", W, H, bits=4, codebook=cb)
    _raises(
        "codebook must have 2^bits = 4 levels per row and group for bits=2, got 8",
        W,
        H,
        bits=2,
        group_size=16,
        codebook=cbg,
    )
    bad = cbg.copy()
    bad[3, 1, 5] = np.nan
    _raises(
        "codebook contains NaN or Inf (first at row 3, group 1, level 5)", W, H, bits=3, group_size=16, codebook=bad
    )
    _raises(
        "codebook contains NaN or Inf (first at row 0, level 2)",
        W,
        H,
        bits=3,
        codebook=np.where(np.arange(8) == 2, 1e39, cb.astype(np.float64)),
    )  # overflows float32
    _raises(
        "codebook must be a real floating-point array (float16/float32/float64), got int64",
        W,
        H,
        bits=3,
        codebook=np.zeros((8, 8), dtype=np.int64),
    )
    for kw, what in (
        (dict(sym=True), "sym=True cannot be combined with {} (codebooks are not symmetric affine grids)"),
        (dict(mse=True), "mse=True cannot be combined with {} (the MSE range search fits affine grids)"),
        (dict(outliers=0.01), "outliers > 0 cannot be combined with {} (the outlier variant's grids are affine)"),
    ):
        _raises(what.format("a codebook"), W, H, bits=3, codebook=cb, **kw)
        _raises(what.format("init='leanquant'"), W, H, bits=3, init="leanquant", **kw)
    for init in ("gptq", "leanquant"):
        _raises(
            f"init='{init}' cannot be combined with a codebook (init='gptq' uses GPTQ's affine grid, "
            "init='leanquant' LeanQuant's own codebooks)",
            W,
            H,
            bits=3,
            init=init,
            codebook=cb,
        )
    _raises("init must be one of 'w', 'rtn', 'gptq', 'leanquant', got 'kmeans'", W, H, init="kmeans")


def test_binding_checks_the_codebook_too():
    """The compiled layer validates on its own (it is callable without the Python wrapper)."""
    p = problems.llm_like(8, 32, seed=0)
    cb = random_codebook(p.W, 3)
    with pytest.raises(
        ValueError, match=re.escape("codebook must be ascending along its last axis (not at row 0, level 1)")
    ):
        core_run(p.W, p.H, codebook=np.ascontiguousarray(cb[:, ::-1]))
    with pytest.raises(ValueError, match=re.escape("codebook must be a C-contiguous float32 array")):
        core_run(p.W, p.H, codebook=cb.astype(np.float64))
    with pytest.raises(ValueError, match=re.escape("codebook must have 2^bits = 16 levels per row for bits=4")):
        core_run(p.W, p.H, bits=4, codebook=cb)
    with pytest.raises(ValueError, match=re.escape("sym=True cannot be combined with init='leanquant'")):
        core_run(p.W, p.H, sym=True, init="leanquant")
