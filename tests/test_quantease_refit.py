"""QuantEase beyond the paper: the grid refit rounds (``refit``) and the MSE grid (``mse``).

The refit keeps every invariant of plain QuantEase (objective monotone over quantized sweeps, coordinate-wise
optimal result, init="gptq" never worse than GPTQ) and must actually lower the objective; each refit is the
exact best scale for the codes it saw (checked against a brute-force line search on small problems).
"""

from __future__ import annotations

import numpy as np
import pytest

import problems
import quantease
from test_quantease import PROBLEM_SET, _llm_like_cases, best_single_move


def _f(W, Q, H):
    D = W.astype(np.float64) - Q.astype(np.float64)
    return float(np.sum((D @ H.astype(np.float64)) * D))


@pytest.mark.parametrize(
    "opts",
    [
        dict(bits=3),
        dict(bits=4, group_size=32),
        dict(bits=2, sym=True),
        dict(bits=3, init="gptq"),
        dict(bits=3, act_order=False, relaxed=False),
        dict(bits=3, group_size=16, sym=True, init="gptq"),
    ],
    ids=str,
)
def test_refit_monotone_and_never_above_plain(opts):
    lowered = 0
    for p in PROBLEM_SET:
        plain = quantease.quantease(p.W, p.H, iters=12, **opts)
        res = quantease.quantease(p.W, p.H, iters=12, refit=4, **opts)
        h, q = res.loss_history, res.info["quantized"]
        n = len(plain.loss_history)
        # the schedule and the polish are those of the plain run; the refit rounds only append sweeps
        np.testing.assert_array_equal(h[:n], plain.loss_history)
        for i in range(n, len(h)):
            assert q[i] and res.info["polish"][i]
            assert h[i] <= h[i - 1] * (1 + 1e-6) + 1e-12, (p, i, h[i - 1], h[i])
        assert res.loss <= plain.loss * (1 + 1e-6) + 1e-12, (p, res.loss, plain.loss)
        assert len(res.info["refit_gains"]) <= 4
        assert res.info["refits"] <= len(res.info["refit_gains"])
        assert all(g >= 0 for g in res.info["refit_gains"])
        lowered += res.loss < plain.loss * (1 - 1e-4)
        # on the grid it reports: integer zeros in range, positive scales, weight = dequantized codes
        maxq = 2**res.bits - 1
        assert np.all(res.scales > 0)
        assert np.all((res.zeros >= 0) & (res.zeros <= maxq) & (res.zeros == np.round(res.zeros)))
        deq = res.scales[:, res.g_idx] * (res.codes.astype(np.float32) - res.zeros[:, res.g_idx])
        np.testing.assert_array_equal(res.weight, deq.astype(np.float32))
    assert lowered >= len(PROBLEM_SET) // 2, lowered


@pytest.mark.parametrize(
    "opts", [dict(bits=3), dict(bits=2, group_size=8), dict(bits=4, sym=True), dict(bits=3, init="gptq")], ids=str
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_result_is_coordinatewise_optimal(opts, seed):
    """Exhaustively: no single entry moved to another point of its (refitted) grid lowers the objective."""
    p = problems.make(["llm_like", "dead_columns", "random"][seed], 12, 32, seed=seed)
    res = quantease.quantease(p.W, p.H, refit=3, **opts)
    assert res.info["converged"]
    worst, f = best_single_move(p, res)
    assert worst >= -1e-6 * f - 1e-12, (worst, f)


def _scale_slack(p, res):
    """Σ over rows of what the best scale for the row's codes (zero fixed) would still gain, and f."""
    H = p.H.astype(np.float64)
    slack = 0.0
    for r in range(res.weight.shape[0]):
        e = res.codes[r].astype(np.float64) - float(res.zeros[r, 0])
        w = p.W[r].astype(np.float64)
        q = res.weight[r].astype(np.float64)
        eHe = float(e @ H @ e)
        if eHe <= 0:
            continue
        s = float(e @ H @ w) / eHe
        slack += float((w - q) @ H @ (w - q)) - float((w - s * e) @ H @ (w - s * e))
    return slack, _f(p.W, res.weight, p.H)


def test_refit_leaves_scales_nearly_optimal_for_the_codes():
    """After the refit rounds run out of gain, no row's scale (with its codes and zero fixed) can lower the
    objective by more than a sliver; the paper's fixed min-max grid leaves a lot on the table."""
    for seed in range(3):
        p = problems.llm_like(16, 64, seed=seed)
        plain = quantease.quantease(p.W, p.H, bits=3)
        res = quantease.quantease(p.W, p.H, bits=3, refit=200)
        assert res.info["refits"] < 200 or res.info["refit_gains"][-1] <= 1e-6 * res.loss * 10
        s_plain, f_plain = _scale_slack(p, plain)
        s_res, f_res = _scale_slack(p, res)
        assert s_plain > 1e-3 * f_plain, (seed, s_plain, f_plain)
        assert s_res <= 2e-4 * f_res, (seed, s_res, f_res)


@pytest.mark.parametrize("bits", [3, 4])
def test_refit_from_gptq_beats_gptq_on_llm_like_problems(bits):
    """init="gptq" with refit: strictly below GPTQ act-order on every LLM-like synthetic problem, and below
    plain init="gptq" on most."""
    below_plain = []
    for name, p in _llm_like_cases():
        g = quantease.gptq(p.W, p.H, bits=bits, act_order=True)
        plain = quantease.quantease(p.W, p.H, bits=bits, init="gptq")
        r = quantease.quantease(p.W, p.H, bits=bits, init="gptq", refit=5)
        assert r.loss < g.loss, (name, r.loss, g.loss)
        below_plain.append(r.loss < plain.loss)
    assert sum(below_plain) >= len(below_plain) - 1, below_plain


@pytest.mark.parametrize("bits", [3, 4])
def test_refit_from_w_beats_gptq_on_synthetic_llm_like_problems(bits):
    """From W (the paper's start) the refit rounds take QuantEase below GPTQ act-order on the synthetic
    LLM-like problems (heavy-tailed rows: the min-max grid from W wastes range), where plain init="w" is above
    GPTQ on bench/synthetic's problems. (On real SmolLM2/MiniLM layers it is not enough: see the report.)"""
    below, below_plain = [], []
    for _name, p in _llm_like_cases():
        g = quantease.gptq(p.W, p.H, bits=bits, act_order=True)
        below.append(quantease.quantease(p.W, p.H, bits=bits, refit=5).loss < g.loss)
        below_plain.append(quantease.quantease(p.W, p.H, bits=bits).loss < g.loss)
    assert sum(below) >= len(below) - 1, below
    assert sum(below) > sum(below_plain), (below, below_plain)


def test_mse_grid_matches_gptq_mse_grid_and_keeps_invariants():
    p = problems.llm_like(24, 96, seed=3)
    g = quantease.gptq(p.W, p.H, bits=3, act_order=True, mse=True)
    r = quantease.quantease(p.W, p.H, bits=3, init="gptq", mse=True)
    np.testing.assert_array_equal(r.scales, g.scales)
    assert r.loss <= g.loss
    # from W: the grid is GPTQ's MSE grid of W itself (per row, no groups: the same search)
    w = quantease.quantease(p.W, p.H, bits=3, mse=True, iters=6)
    np.testing.assert_array_equal(w.scales, g.scales)
    np.testing.assert_array_equal(w.zeros, g.zeros)
    plain = quantease.quantease(p.W, p.H, bits=3, iters=6)
    assert not np.array_equal(w.scales, plain.scales)


@pytest.mark.parametrize(
    "value, message",
    [
        (-1, "refit must be an integer >= 0, got -1"),
        (1.5, "refit must be an integer >= 0, got 1.5"),
        (True, "refit must be an integer >= 0, got True"),
    ],
)
def test_refit_messages(value, message):
    p = problems.llm_like(8, 32, seed=0)
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.") + "$"):
        quantease.quantease(p.W, p.H, refit=value)


def test_mse_message():
    p = problems.llm_like(8, 32, seed=0)
    with pytest.raises(ValueError, match="mse"):
        quantease.quantease(p.W, p.H, mse=1)
