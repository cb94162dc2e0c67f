"""The peers the benchmarks compare against (bench/peers/): small correctness checks of the torch-CPU ports
of the GPTQ, QuantEase and LeanQuant reference loops, and of the data-free peer adapters when installed.

The whole file is skipped when torch is not importable (the ports are torch code; quantease itself is not).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers.torch_gptq import gptq as torch_gptq  # noqa: E402
from bench.peers.torch_leanquant import leanquant as torch_leanquant  # noqa: E402
from bench.peers.torch_quantease import quantease as torch_quantease  # noqa: E402
from problems import code_agreement, dead_columns, llm_like, random_problem  # noqa: E402
from reference.gptq import gptq as oracle_gptq  # noqa: E402
from reference.gptq import layer_loss  # noqa: E402
from reference.rtn import rtn as oracle_rtn  # noqa: E402

ROWS, COLS = 64, 128

GPTQ_CONFIGS = [
    dict(),
    dict(group_size=32),  # groups smaller than the block: the quirk
    dict(group_size=64, act_order=True),
    dict(group_size=32, act_order=True, static_groups=True),
    dict(sym=True),
    dict(bits=3, act_order=True),
    dict(bits=2),
]


def _cfg_id(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "default"


def _on_grid(Q: np.ndarray, info: dict, bits: int) -> None:
    codes, g_idx = info["codes"], info["g_idx"]
    assert codes.dtype == np.uint8 and int(codes.max()) <= 2**bits - 1
    deq = info["scales"][:, g_idx] * (codes.astype(np.float32) - info["zeros"][:, g_idx])
    np.testing.assert_allclose(Q, deq, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------- GPTQ


@pytest.mark.parametrize("cfg", GPTQ_CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_gptq_beats_rtn_and_is_on_grid(cfg, seed):
    p = llm_like(ROWS, COLS, seed=seed)
    bits = cfg.get("bits", 4)
    info: dict = {}
    Q, seconds = torch_gptq(p.W, p.H, threads=1, info=info, **cfg)
    assert Q.dtype == np.float32 and Q.shape == p.W.shape and seconds > 0
    assert np.isfinite(Q).all()
    _on_grid(Q, info, bits)
    r = oracle_rtn(p.W, bits=bits, group_size=cfg.get("group_size", -1), sym=cfg.get("sym", False))
    assert layer_loss(p.W, Q, p.H) <= layer_loss(p.W, r["weight"], p.H)


@pytest.mark.parametrize("cfg", GPTQ_CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("make", [llm_like, random_problem, dead_columns], ids=lambda f: f.__name__)
def test_torch_gptq_agrees_with_numpy_oracle(cfg, make):
    """The port is the authors' loop in float32; the oracle's reference mode is the same loop in float64:
    codes agree except near rounding ties."""
    p = make(ROWS, COLS, seed=3)
    info: dict = {}
    Q, _ = torch_gptq(p.W, p.H, threads=1, info=info, **cfg)
    ref = oracle_gptq(p.W, p.H, reference=True, **cfg)
    assert code_agreement(info["codes"], ref["codes"]) >= 0.99
    lq, lr = (
        layer_loss(p.W, Q, p.H),
        ref["loss"] if ref.get("loss") is not None else layer_loss(p.W, ref["weight"], p.H),
    )
    assert abs(lq - lr) <= 0.02 * lr
    if cfg.get("act_order"):  # same order up to ties of diag(H) (torch's argsort is not stable)
        d = np.where(np.diag(p.H) == 0, 1, np.diag(p.H))
        np.testing.assert_array_equal(d[info["perm"]], d[ref["perm"]])
    np.testing.assert_array_equal(info["g_idx"], ref["g_idx"])


def test_torch_gptq_leaves_inputs_alone():
    p = llm_like(ROWS, COLS, seed=4)
    W0, H0 = p.W.copy(), p.H.copy()
    torch_gptq(p.W, p.H, group_size=32, act_order=True, threads=1)
    np.testing.assert_array_equal(p.W, W0)
    np.testing.assert_array_equal(p.H, H0)


# -------------------------------------------------------------------------------------------- QuantEase


def _quantized_pairs(iters: int, relaxed_sweeps: list[int]):
    """Consecutive sweep pairs (a, a+1) that are both quantized: there f cannot increase."""
    rel = set(relaxed_sweeps)
    return [(a, a + 1) for a in range(iters - 1) if a not in rel and a + 1 not in rel]


@pytest.mark.parametrize(
    "cfg",
    [
        dict(),
        dict(group_size=32),
        dict(bits=3, sym=True),
        dict(act_order=False),
        dict(group_size=32, static_groups=True),
    ],
    ids=_cfg_id,
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_quantease_objective_non_increasing_on_quantized_sweeps(cfg, seed):
    p = llm_like(ROWS, COLS, seed=seed)
    iters = 12
    info: dict = {}
    Q, seconds, hist = torch_quantease(p.W, p.H, iters=iters, threads=1, info=info, **cfg)
    assert len(hist) == iters and seconds > 0 and np.isfinite(Q).all()
    assert info["relaxed_sweeps"] == [1, 4, 7, 10]
    pairs = _quantized_pairs(iters, info["relaxed_sweeps"])
    assert pairs
    for a, b in pairs:
        assert hist[b] <= hist[a] * (1 + 1e-5) + 1e-9, (a, b, hist)
    # the history is the true objective of the returned (last-sweep) weights
    assert hist[-1] == pytest.approx(layer_loss(p.W, Q, p.H), rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_quantease_plain_cd_monotone_and_beats_rtn(seed):
    p = llm_like(ROWS, COLS, seed=seed)
    Q, _, hist = torch_quantease(p.W, p.H, iters=8, relaxed=False, threads=1)
    assert all(b <= a * (1 + 1e-5) + 1e-9 for a, b in zip(hist, hist[1:])), hist
    assert hist[-1] <= layer_loss(p.W, oracle_rtn(p.W)["weight"], p.H)


def _naive_cd(W, S, scale, zero, maxq, iters):
    """Plain NumPy coordinate descent (float64): beta_j from the definition, nearest grid point,
    relaxed (unquantized) sweeps at iter % 3 == 1 (<= 25, never the last)."""
    W = W.astype(np.float64)
    S = S.astype(np.float64)
    Wh = W.copy()
    for it in range(iters):
        quant = it % 3 != 1 or it == iters - 1 or it > 25
        for j in range(W.shape[1]):
            others = Wh @ S[:, j] - Wh[:, j] * S[j, j]
            beta = ((W @ S[:, j]) - others) / S[j, j]
            if quant:
                beta = scale * (np.clip(np.rint(beta / scale) + zero, 0, maxq) - zero)
            Wh[:, j] = beta
    return Wh


def test_torch_quantease_equals_naive_coordinate_descent():
    p = llm_like(16, 32, seed=12)
    r = oracle_rtn(p.W)
    s, z = r["scales"][:, :1].astype(np.float64), r["zeros"][:, :1].astype(np.float64)
    Q, _, _ = torch_quantease(p.W, p.H, iters=4, act_order=False, threads=1)
    ref = _naive_cd(p.W, p.H, s[:, 0], z[:, 0], 15, iters=4)
    assert code_agreement(np.rint(Q / s + z), np.rint(ref / s + z)) >= 0.99
    assert layer_loss(p.W, Q, p.H) == pytest.approx(layer_loss(p.W, ref, p.H), rel=1e-4)


def test_torch_quantease_output_on_row_grid():
    """Every entry of the final (quantized) sweep is a point of its row's min-max grid fitted from W."""
    p = llm_like(ROWS, COLS, seed=5)
    Q, _, _ = torch_quantease(p.W, p.H, iters=5, threads=1)
    r = oracle_rtn(p.W)  # same row grid (fitted once from W, asym, per row)
    s, z = r["scales"][:, :1], r["zeros"][:, :1]
    codes = np.rint(Q / s + z)
    assert codes.min() >= 0 and codes.max() <= 15
    np.testing.assert_allclose(Q, s * (codes - z), rtol=1e-5, atol=1e-6)


def test_torch_quantease_max_sweeps_keeps_schedule():
    p = llm_like(ROWS, COLS, seed=6)
    info: dict = {}
    _, _, hist = torch_quantease(p.W, p.H, iters=30, max_sweeps=3, threads=1, info=info)
    assert len(hist) == 3 and info["sweeps"] == 3 and info["relaxed_sweeps"] == [1]
    assert len(info["sweep_seconds"]) == 3


# -------------------------------------------------------------------------------------------- LeanQuant


def _check_codebook(Q, info, rows, bits):
    codes, book = info["codes"], info["codebook"]
    assert book.shape == (rows, 2**bits) and book.dtype == np.float32
    assert codes.dtype == np.uint8 and int(codes.max()) < 2**bits
    np.testing.assert_array_equal(Q, np.take_along_axis(book, codes.astype(np.int64), axis=1))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_torch_leanquant_lloyd_codes_index_row_codebook(bits):
    p = llm_like(ROWS, COLS, seed=7)
    info: dict = {}
    Q, seconds = torch_leanquant(p.W, p.H, bits=bits, kmeans="lloyd", threads=1, info=info)
    assert seconds > 0 and np.isfinite(Q).all()
    _check_codebook(Q, info, ROWS, bits)
    assert 0 <= info["kmeans_seconds"] <= seconds


def test_torch_leanquant_sklearn_codes_index_row_codebook():
    pytest.importorskip("sklearn")
    p = llm_like(16, COLS, seed=8)
    info: dict = {}
    Q, _ = torch_leanquant(p.W, p.H, bits=3, kmeans="sklearn", processes=1, threads=1, info=info)
    _check_codebook(Q, info, 16, 3)
    # the Lloyd back end starts from the same evenly spaced centroids: close codebooks
    info2: dict = {}
    torch_leanquant(p.W, p.H, bits=3, kmeans="lloyd", threads=1, info=info2)
    spread = p.W.max(1) - p.W.min(1)
    diff = np.abs(np.sort(info["codebook"], 1) - np.sort(info2["codebook"], 1)).max(1)
    assert np.median(diff / spread) < 0.05


def test_torch_leanquant_beats_rtn_at_3_bits():
    p = llm_like(ROWS, COLS, seed=9)
    Q, _ = torch_leanquant(p.W, p.H, bits=3, kmeans="lloyd", threads=1)
    assert layer_loss(p.W, Q, p.H) <= layer_loss(p.W, oracle_rtn(p.W, bits=3)["weight"], p.H)


def test_torch_leanquant_rejects_unknown_kmeans():
    p = random_problem(8, 32)
    with pytest.raises(ValueError, match="kmeans must be"):
        torch_leanquant(p.W, p.H, kmeans="faiss")


# ------------------------------------------------------------------------ data-free peers (when installed)


def test_hqq_adapter_groups_of_64():
    pytest.importorskip("hqq")
    from bench.peers import installed

    W = llm_like(ROWS, COLS, seed=10).W
    Q, sec = installed._hqq(W, bits=4, group_size=64, threads=1)
    assert Q.shape == W.shape and Q.dtype == np.float32 and sec > 0
    for g in range(COLS // 64):  # at most 16 distinct values per (row, group)
        blk = Q[:, g * 64 : (g + 1) * 64]
        assert max(len(np.unique(r)) for r in blk) <= 16
    assert np.mean((Q - W) ** 2) < np.mean((oracle_rtn(W, group_size=64)["weight"] - W) ** 2) * 1.5


def test_bitsandbytes_nf4_adapter():
    pytest.importorskip("bitsandbytes")
    from bench.peers import installed

    W = llm_like(ROWS, COLS, seed=11).W
    Q, sec = installed._bnb_nf4(W, group_size=64, threads=1)
    assert Q.shape == W.shape and Q.dtype == np.float32
    blk = Q.reshape(-1, 64)
    assert max(len(np.unique(r)) for r in blk) <= 16
    # each block's absmax is reproduced up to the absmax's own storage precision
    np.testing.assert_allclose(np.abs(blk).max(1), np.abs(W.reshape(-1, 64)).max(1), rtol=1e-2)
