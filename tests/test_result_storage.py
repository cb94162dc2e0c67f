"""What a QuantResult says about itself: bits per weight by part, a short repr of the outliers, and the phase
split every solver reports."""

from __future__ import annotations

import numpy as np
import pytest

import quantease

ROWS, COLS = 48, 192


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    X = rng.standard_normal((4 * COLS, COLS)).astype(np.float32)
    return W, (X.T @ X / X.shape[0]).astype(np.float32)


def test_bits_per_weight_counts_every_stored_part(problem):
    W, H = problem
    n = ROWS * COLS
    r = quantease.rtn(W, bits=3, group_size=64)
    assert r.storage_bits() == {"codes": 3 * n, "grid": ROWS * 3 * (16 + 3), "g_idx": 0, "outliers": 0}
    assert r.bits_per_weight == pytest.approx(3 + 19 / 64)
    assert quantease.rtn(W, bits=4, sym=True).bits_per_weight == pytest.approx(4 + 16 / COLS)
    # act-order with groups: the column -> group map is stored (int32 per column)
    g = quantease.gptq(W, H, bits=3, group_size=64, act_order=True)
    assert g.storage_bits()["g_idx"] == 32 * COLS
    assert quantease.gptq(W, H, bits=3, group_size=-1, act_order=True).storage_bits()["g_idx"] == 0
    # codebooks: 2^bits fp16 levels per row (and group)
    assert quantease.leanquant(W, H, bits=3).storage_bits()["grid"] == ROWS * 8 * 16
    assert quantease.leanquant(W, H, bits=3, group_size=64).bits_per_weight == pytest.approx(3 + 8 * 16 / 64)
    # outliers: an fp16 value and an int32 column per entry, an int64 row pointer per row
    e = quantease.easyquant(W, bits=3, outlier_sigma=2.0)
    nnz = e.outliers.nnz
    assert nnz > 0 and e.storage_bits()["outliers"] == nnz * 48 + (ROWS + 1) * 64


def test_outliers_repr_is_short(problem):
    W, _ = problem
    r = quantease.easyquant(W, bits=3, outlier_sigma=2.0)
    text = repr(r.outliers)
    assert text == f"SparseOutliers(shape=({ROWS}, {COLS}), nnz={r.outliers.nnz} ({r.outliers.nnz / W.size:.2%}))"
    assert len(text) < 80


@pytest.mark.parametrize("solver", ["rtn", "gptq", "quantease", "easyquant", "leanquant"])
def test_every_solver_reports_its_phases(problem, solver):
    W, H = problem
    fn = getattr(quantease, solver)
    r = fn(W, bits=3) if solver in ("rtn", "easyquant") else fn(W, H, bits=3)
    phases = r.info["phase_seconds"]
    assert phases and all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= r.seconds * 1.01 + 1e-3
