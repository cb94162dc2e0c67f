"""quantease.solvers: the named entries the pipeline and the main job run -- "quantease" is our best QuantEase,
"quantease-paper" the paper's schedule -- and how an entry's own options combine with the caller's."""

from __future__ import annotations

import numpy as np
import pytest

import problems
import quantease
from quantease.solvers import NAMES, QUANTEASE_BEST, SOLVERS, get_solver


@pytest.fixture(scope="module")
def layer():
    p = problems.make("llm_like", rows=48, cols=128, seed=3)
    return p.W, p.H


def test_quantease_entries(layer):
    W, H = layer
    assert {"quantease", "quantease-paper"} <= set(NAMES)
    best, paper = get_solver("quantease"), get_solver("quantease-paper")
    assert best.function is paper.function is quantease.quantease and best.needs_hessian and paper.needs_hessian
    assert dict(best.defaults) == QUANTEASE_BEST and dict(paper.defaults) == {}
    r_best = best.run(W, H, bits=3, group_size=64)
    expected = quantease.quantease(W, H, bits=3, group_size=64, **QUANTEASE_BEST)
    np.testing.assert_array_equal(r_best.weight, expected.weight)
    r_paper = paper.run(W, H, bits=3, group_size=64)
    np.testing.assert_array_equal(r_paper.weight, quantease.quantease(W, H, bits=3, group_size=64).weight)
    # our best starts from GPTQ (act-order, as QuantEase orders its columns) and can only lower its loss
    g = quantease.gptq(W, H, bits=3, group_size=64, act_order=True)
    assert r_best.loss <= g.loss * (1 + 1e-6)


def test_caller_options_win_over_the_entry(layer):
    W, H = layer
    r = get_solver("quantease").run(W, H, bits=3, init="w", iters=2)
    np.testing.assert_array_equal(r.weight, quantease.quantease(W, H, bits=3, init="w", iters=2).weight)


def test_every_entry_runs(layer):
    W, H = layer
    for name, solver in SOLVERS.items():
        r = solver.run(W, H if solver.needs_hessian else None, bits=4)
        assert r.weight.shape == W.shape and np.all(np.isfinite(r.weight)), name
