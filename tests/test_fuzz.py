"""Fuzzing every solver and the Hessian accumulator with hypothesis.

Each call either returns a result that passes the solver's own properties (finite float32 weight, codes in
range, weight == the grid's values of the codes plus the outliers, a finite loss >= lambda_min(H) ||W - W_hat||^2,
so >= 0 for a positive semi-definite H) or raises the documented exception: ValueError naming the argument
when the input is invalid, and quantease.NumericalError (for a Hessian no damping can factor) only then. A
valid input must never be refused, an invalid one never accepted, and no input is ever modified.

Input space: shapes 1 x 1 to odd sizes past a 128-column block; W and H in float16/32/64, C or Fortran order
or strided views; bits 2..8; every divisor of cols as a group size, and non-divisors; H from few samples
(rank-deficient), with dead columns (zero diagonal entries), scaled by 1e-30..1e30 (denormals at the low
end, float16 overflow at the high end), slightly or clearly asymmetric, indefinite, with NaN or Inf; W with
all-equal rows, signed zeros, huge outliers, NaN or Inf.

The arrays come from a NumPy generator seeded by hypothesis, so an example costs little to draw; hypothesis
shrinks the shapes, options and seed. Examples: 25 per test in the normal suite (profile "quantease"),
2,000 in CI (`HYPOTHESIS_PROFILE=fuzz pytest -m fuzz -p no:randomly --hypothesis-seed=0`, see .ci/run; the
failures it finds are kept in the git-ignored .hypothesis-fuzz/ and replayed first). Every failure found
so far is an explicit regression test at the end of this file.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import quantease
from quantease import gguf as qg

pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore:H was not positive definite:RuntimeWarning")]

DTYPES = [np.float16, np.float32, np.float64]


@dataclasses.dataclass
class Case:
    """One drawn input; the defaults are the plain case, so a found example states only what is unusual."""

    rows: int
    cols: int
    bits: int = 4
    group_size: int = -1
    w_dtype: type = np.float32
    w_layout: str = "C"  # "C", "F" or "strided"
    w_kind: str = "normal"  # "normal", "equal_rows", "signed_zeros", "outliers", "nan", "inf"
    outlier_exp: int = 1  # outliers: |w| up to 10^outlier_exp
    h_dtype: type = np.float32
    h_layout: str = "C"
    h_samples: int = 1  # rows of X: fewer than cols makes H rank-deficient (0: H = 0)
    h_dead: int = 0  # columns of X set to 0: zero diagonal entries
    h_scale_exp: int = 0  # H scaled by 10^h_scale_exp
    h_kind: str = "psd"  # "psd", "asym_small", "asym_large", "indefinite", "negative_diag", "nan", "inf"
    seed: int = 0


@st.composite
def cases(draw, max_rows: int = 40, max_cols: int = 160, cols: Optional[int] = None) -> Case:
    """Mostly valid inputs (each invalid kind a few percent of the draws), so both outcomes get tested."""
    cols = draw(st.integers(1, max_cols)) if cols is None else cols
    divisors = [d for d in range(1, cols + 1) if cols % d == 0]
    group_kind = draw(st.sampled_from(["row", "row", "divisor", "divisor", "divisor", "any"]))
    group_size = {"row": st.just(-1), "divisor": st.sampled_from(divisors), "any": st.integers(-3, cols + 3)}[
        group_kind
    ]
    return Case(
        rows=draw(st.integers(1, max_rows)),
        cols=cols,
        bits=draw(st.sampled_from(list(range(2, 9)) * 3 + [0, 1, 9, 16])),
        group_size=draw(group_size),
        w_dtype=draw(st.sampled_from(DTYPES)),
        w_layout=draw(st.sampled_from(["C", "F", "strided"])),
        w_kind=draw(
            st.sampled_from(["normal"] * 8 + ["equal_rows", "signed_zeros", "outliers", "outliers", "nan", "inf"])
        ),
        outlier_exp=draw(st.integers(1, 30)),
        h_dtype=draw(st.sampled_from(DTYPES)),
        h_layout=draw(st.sampled_from(["C", "F", "strided"])),
        h_samples=draw(st.integers(0, 2 * cols + 8)),
        h_dead=draw(st.sampled_from([0, 0, 1, 2, cols // 2, cols])),
        h_scale_exp=draw(st.sampled_from([0, 0, 0, 0, -30, -20, -10, 10, 20, 30])),
        h_kind=draw(
            st.sampled_from(["psd"] * 10 + ["asym_small", "asym_large", "indefinite", "negative_diag", "nan", "inf"])
        ),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _layout(a: np.ndarray, layout: str, rng: np.random.Generator) -> np.ndarray:
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":  # every other row and column of a larger array
        big = rng.standard_normal((2 * a.shape[0], 2 * a.shape[1])).astype(a.dtype)
        big[::2, 1::2] = a
        return big[::2, 1::2]
    return np.ascontiguousarray(a)


def make_weight(c: Case, rng: np.random.Generator) -> np.ndarray:
    W = rng.standard_normal((c.rows, c.cols)) / np.sqrt(c.cols)
    if c.w_kind == "equal_rows":
        W[:] = W[:, :1]  # every row constant
        W[rng.integers(c.rows)] = 0.0
    elif c.w_kind == "signed_zeros":
        W[rng.random(W.shape) < 0.5] = 0.0
        W[rng.random(W.shape) < 0.5] *= -1.0  # -0.0 where zero
    elif c.w_kind == "outliers":
        hits = rng.random(W.shape) < 0.02
        W[hits] = rng.choice([-1.0, 1.0], hits.sum()) * 10.0 ** rng.uniform(0, c.outlier_exp, hits.sum())
    elif c.w_kind in ("nan", "inf"):
        W[rng.integers(c.rows), rng.integers(c.cols)] = np.nan if c.w_kind == "nan" else -np.inf
    with np.errstate(over="ignore"):
        return _layout(W.astype(c.w_dtype), c.w_layout, rng)


def make_hessian(c: Case, rng: np.random.Generator) -> np.ndarray:
    X = rng.standard_normal((c.h_samples, c.cols)) * rng.uniform(0.1, 10.0, c.cols)
    X[:, rng.choice(c.cols, size=min(c.h_dead, c.cols), replace=False)] = 0.0
    H = (2.0 / max(c.h_samples, 1)) * (X.T @ X)
    H = (H + H.T) / 2
    if c.h_kind == "asym_small":
        H = H + 1e-7 * np.abs(H).max() * np.triu(rng.standard_normal(H.shape), 1)
    elif c.h_kind == "asym_large":
        H = H + 1e-2 * max(np.abs(H).max(), 1.0) * np.triu(rng.standard_normal(H.shape), 1)
        H[0, -1] += 1.0 if c.cols > 1 else 0.0
    elif c.h_kind == "indefinite":
        H = H - 0.5 * np.mean(np.diag(H)) * np.diag(rng.random(c.cols) < 0.3)
        H = H + np.diag(np.maximum(-np.diag(H), 0.0))  # the diagonal stays >= 0
    elif c.h_kind == "negative_diag":
        H[rng.integers(c.cols), :] *= 1.0
        i = rng.integers(c.cols)
        H[i, i] = -1.0 - abs(H[i, i])
    elif c.h_kind in ("nan", "inf"):
        i, j = rng.integers(c.cols, size=2)
        H[i, j] = H[j, i] = np.nan if c.h_kind == "nan" else np.inf
    with np.errstate(over="ignore", under="ignore"):
        H = H * 10.0**c.h_scale_exp
        return _layout(H.astype(c.h_dtype), c.h_layout, rng)


# --- what the library must say about a case ---------------------------------------------------------------


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(np.asarray(a, dtype=np.float64)).all())


def invalid_arguments(c: Case, W: np.ndarray, H: Optional[np.ndarray], uses: str) -> set:
    """The arguments that make this call invalid (the ValueError must name one of them)."""
    bad = set()
    if not _finite(W):
        bad.add("W")
    if not (2 <= c.bits <= 8):
        bad.add("bits")
    if not (c.group_size == -1 or (c.group_size > 0 and c.cols % c.group_size == 0)):
        bad.add("group_size")
    if H is not None:
        Hd = np.asarray(H, dtype=np.float64)
        if not _finite(Hd):
            bad.add("H")
        else:
            max_abs = np.abs(Hd).max()
            if np.abs(Hd - Hd.T).max() > 1e-4 * max_abs:
                bad.add("H")
            if uses == "solve" and not np.diag(Hd).any():
                bad.add("H")
    return bad


def loss_floor(W: np.ndarray, weight: np.ndarray, H: np.ndarray) -> float:
    """The least sum_rows d^T H d can be: lambda_min ||D||^2, less float64 round-off. The loss reads H's upper
    triangle (mirrored), so that is the matrix whose eigenvalue counts; 0 for a positive semi-definite H."""
    D = np.asarray(W, dtype=np.float64) - weight
    Hd = np.asarray(H, dtype=np.float64)
    Hu = np.triu(Hd) + np.triu(Hd, 1).T
    lam = min(np.linalg.eigvalsh(Hu).min(), 0.0) if Hu.any() else 0.0
    return lam * float((D * D).sum()) - 1e-9 * float((np.abs(D) @ np.abs(Hu) * np.abs(D)).sum())


def names_argument(message: str, allowed: set) -> bool:
    return any(
        re.match(rf"{re.escape(name)}\b", message) or re.search(rf"\b{re.escape(name)}\b", message) for name in allowed
    )


def check_call(
    call: Callable[[], quantease.QuantResult],
    c: Case,
    W: np.ndarray,
    H: Optional[np.ndarray],
    uses: str = "solve",
    numerical_ok: bool = False,
) -> Optional[quantease.QuantResult]:
    """Runs the call and checks the outcome against the case; returns the result when there is one."""
    copies = [(a, a.copy()) for a in (W, H) if a is not None]
    bad = invalid_arguments(c, W, H, uses)
    result = None
    try:
        result = call()
    except quantease.NumericalError as err:
        assert numerical_ok and not bad, f"NumericalError on {'invalid ' + str(bad) if bad else 'a valid input'}: {err}"
        assert "H" in str(err) or "Hessian" in str(err), err
    except ValueError as err:
        assert bad, f"a valid input was refused: {err}"
        assert names_argument(str(err), bad), f"the message names none of {sorted(bad)}: {err}"
    else:
        assert not bad, f"invalid {sorted(bad)} accepted"
        check_result(result, c, W, H)
    for a, before in copies:
        assert np.array_equal(a, before, equal_nan=True), "an input was modified"
    return result


def check_result(r: quantease.QuantResult, c: Case, W: np.ndarray, H: Optional[np.ndarray]) -> None:
    rows, cols = c.rows, c.cols
    groups = 1 if c.group_size == -1 else cols // c.group_size
    assert r.weight.shape == (rows, cols) and r.weight.dtype == np.float32
    assert np.isfinite(r.weight).all(), "non-finite weight"
    assert r.codes.shape == (rows, cols) and r.codes.dtype == np.uint8
    assert int(r.codes.max(initial=0)) < (1 << c.bits), "code out of range"
    assert r.g_idx.shape == (cols,) and ((0 <= r.g_idx) & (r.g_idx < groups)).all()
    if r.codebook is not None:
        assert np.isfinite(r.codebook).all()
    else:
        assert r.scales.shape == (rows, groups) and np.isfinite(r.scales).all() and (r.scales > 0).all()
        assert np.isfinite(r.zeros).all() and (r.zeros == np.rint(r.zeros)).all()
    np.testing.assert_array_equal(r.dense_weight(), r.weight, err_msg="weight != dequantized codes + outliers")
    if H is not None and r.loss is not None:
        assert np.isfinite(r.loss), f"loss {r.loss}"
        assert r.loss >= loss_floor(W, r.weight, H), f"loss {r.loss} below lambda_min(H) ||W - W_hat||^2"


def draw_arrays(c: Case, with_h: bool = True):
    rng = np.random.default_rng(c.seed)
    W = make_weight(c, rng)
    H = make_hessian(c, rng) if with_h else None
    return W, H


# --- the solvers --------------------------------------------------------------------------------------------


@given(c=cases(), sym=st.booleans(), mse=st.booleans(), fp16=st.booleans())
def test_rtn(c, sym, mse, fp16):
    W, _ = draw_arrays(c, with_h=False)
    check_call(
        lambda: quantease.rtn(W, bits=c.bits, group_size=c.group_size, sym=sym, mse=mse, fp16_scales=fp16), c, W, None
    )


@given(
    c=cases(),
    act_order=st.booleans(),
    static=st.booleans(),
    sym=st.booleans(),
    mse=st.booleans(),
    reference=st.booleans(),
    block=st.sampled_from([1, 7, 32, 128]),
)
def test_gptq(c, act_order, static, sym, mse, reference, block):
    W, H = draw_arrays(c)
    check_call(
        lambda: quantease.gptq(
            W,
            H,
            bits=c.bits,
            group_size=c.group_size,
            act_order=act_order,
            static_groups=static,
            sym=sym,
            mse=mse,
            reference=reference,
            block_size=block,
        ),
        c,
        W,
        H,
        numerical_ok=True,
    )


# Found by the fuzzer: |w| = 1e9 against an H of 1e30 overflows every sweep's objective, so no sweep became
# the best iterate and quantease returned the codes of a buffer never written (bytes of unrelated memory).
OVERFLOWING_OBJECTIVE = Case(rows=1, cols=31, bits=2, w_kind="outliers", outlier_exp=9, h_scale_exp=30, seed=40672342)


@given(
    c=cases(max_rows=24, max_cols=96),
    variant=st.sampled_from(["plain", "outliers", "gptq", "refit", "codebook", "leanquant", "quantized"]),
    iters=st.integers(1, 6),
    act_order=st.booleans(),
)
@example(c=OVERFLOWING_OBJECTIVE, variant="codebook", iters=2, act_order=False)
@example(c=OVERFLOWING_OBJECTIVE, variant="plain", iters=1, act_order=False)
def test_quantease(c, variant, iters, act_order):
    W, H = draw_arrays(c)
    kw = dict(bits=c.bits, group_size=c.group_size, iters=iters, act_order=act_order)
    if variant == "outliers":
        kw.update(outliers=0.02)
    elif variant == "gptq":
        kw.update(init="gptq")
    elif variant == "refit":
        kw.update(refit=2)
    elif variant == "leanquant":
        kw.update(init="leanquant", refit=1)
    elif variant == "quantized":
        kw.update(relaxed=False)
    elif variant == "codebook":
        rng = np.random.default_rng(c.seed + 1)
        groups = c.cols // c.group_size if c.group_size > 0 and c.cols % c.group_size == 0 else 0
        levels = 1 << min(max(c.bits, 1), 8)
        shape = (c.rows, groups, levels) if groups else (c.rows, levels)
        kw.update(codebook=rng.standard_normal(shape) * 0.1)
    check_call(lambda: quantease.quantease(W, H, **kw), c, W, H, numerical_ok=variant in ("gptq", "leanquant"))


@given(
    c=cases(),
    sym=st.booleans(),
    stats=st.sampled_from(["tensor", "row"]),
    sigma=st.sampled_from([1.0, 3.0, None]),
    with_h=st.booleans(),
)
def test_easyquant(c, sym, stats, sigma, with_h):
    W, H = draw_arrays(c, with_h=with_h)
    check_call(
        lambda: quantease.easyquant(
            W, bits=c.bits, group_size=c.group_size, sym=sym, outlier_stats=stats, outlier_sigma=sigma, steps=10, H=H
        ),
        c,
        W,
        H,
        uses="evaluate",
    )


@given(
    c=cases(),
    grid=st.sampled_from(["nonuniform", "affine"]),
    act_order=st.booleans(),
    exponent=st.sampled_from([0.0, 1.0, 4.0]),
)
def test_leanquant(c, grid, act_order, exponent):
    W, H = draw_arrays(c)
    check_call(
        lambda: quantease.leanquant(
            W, H, bits=c.bits, group_size=c.group_size, grid=grid, act_order=act_order, exponent=exponent
        ),
        c,
        W,
        H,
        numerical_ok=True,
    )


@st.composite
def gguf_cases(draw):
    name = draw(st.sampled_from(sorted(qg.TYPES)))
    t = qg.TYPES[name]
    blocks = draw(st.integers(1, 3 if t.k_quant else 6))
    cols = blocks * t.block_size + draw(st.sampled_from([0] * 9 + [t.block_size // 2]))  # some not whole blocks
    return name, draw(cases(max_rows=12 if t.k_quant else 24, cols=cols))


# Found by the fuzzer: |w| = 1e11 made llama.cpp's float16 block scale Inf -- non-finite weights from rtn and
# gptq, and quantease refused its own grids as "codebook contains NaN or Inf". Now a ValueError naming W.
HUGE_Q2_K = ("Q2_K", Case(rows=1, cols=256, bits=2, w_kind="outliers", outlier_exp=11, h_dtype=np.float16))


@given(
    gc=gguf_cases(), solver=st.sampled_from(["rtn", "rtn_imatrix", "gptq", "gptq_act", "quantease", "quantease_gptq"])
)
@example(gc=HUGE_Q2_K, solver="rtn_imatrix")
@example(gc=HUGE_Q2_K, solver="gptq")
@example(gc=HUGE_Q2_K, solver="quantease")
def test_gguf(gc, solver):
    name, c = gc
    c.bits, c.group_size = 4, -1  # the type fixes the grid
    W, H = draw_arrays(c)
    t = qg.TYPES[name]
    calls = {
        "rtn": lambda: quantease.rtn(W, gguf=name),
        "rtn_imatrix": lambda: quantease.rtn(W, gguf=name, imatrix=np.abs(np.diagonal(H)).astype(np.float64)),
        "gptq": lambda: quantease.gptq(W, H, gguf=name),
        "gptq_act": lambda: quantease.gptq(W, H, gguf=name, act_order=True),
        "quantease": lambda: quantease.quantease(W, H, gguf=name, iters=3),
        "quantease_gptq": lambda: quantease.quantease(W, H, gguf=name, iters=2, init="gptq"),
    }
    uses_h = not solver.startswith("rtn")
    copies = [(a, a.copy()) for a in (W, H)]
    bad = invalid_arguments(c, W, H if uses_h else None, "solve")
    bad.discard("bits")
    if c.cols % t.block_size:
        bad.add("gguf")
    if solver == "rtn_imatrix" and not _finite(np.diagonal(np.asarray(H, dtype=np.float64))):
        bad.add("imatrix")
    # llama.cpp stores block scales in float16: past its range (65504) a type may not hold W
    too_large = _finite(W) and np.abs(np.asarray(W, dtype=np.float64)).max(initial=0) > 65504
    try:
        r = calls[solver]()
    except quantease.NumericalError as err:
        assert uses_h and not bad, err
    except ValueError as err:
        if not (too_large and str(err).startswith("W's values are too large for")):
            assert bad, f"a valid input was refused: {err}"
            assert names_argument(str(err), bad), f"the message names none of {sorted(bad)}: {err}"
    else:
        assert not bad, f"invalid {sorted(bad)} accepted"
        assert r.weight.shape == W.shape and np.isfinite(r.weight).all()
        assert int(r.codes.max(initial=0)) < (1 << t.bits)
        np.testing.assert_array_equal(qg.dequantize(r.gguf, r.codes), r.weight)
        np.testing.assert_array_equal(qg.unpack(qg.pack(r), name, W.shape), r.weight)
        if uses_h:
            assert np.isfinite(r.loss) and r.loss >= loss_floor(W, r.weight, H)
    for a, before in copies:
        assert np.array_equal(a, before, equal_nan=True), "an input was modified"


@given(
    cols=st.integers(1, 140),
    batches=st.lists(
        st.tuples(
            st.integers(0, 60),
            st.sampled_from(DTYPES),
            st.sampled_from(["C", "F", "strided"]),
            st.sampled_from(["normal", "nan", "huge"]),
        ),
        min_size=0,
        max_size=4,
    ),
    dtype=st.sampled_from(["float64", "float32"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hessian_accumulator(cols, batches, dtype, seed):
    rng = np.random.default_rng(seed)
    acc = quantease.HessianAccumulator(cols, dtype=dtype)
    taken = []
    exact = True  # float64 products: only float64 batches into the float64 sum (others go through float32 GEMMs)
    for n, x_dtype, layout, kind in batches:
        X = rng.standard_normal((n, cols))
        if kind == "nan" and n:
            X[rng.integers(n), rng.integers(cols)] = np.nan
        if kind == "huge":
            X *= 1e3
        X = _layout(X.astype(x_dtype), layout, rng)
        before = X.copy()
        if n == 0 or not np.isfinite(X).all():
            with pytest.raises(ValueError, match=r"^X "):
                acc.add(X)
        else:
            acc.add(X)
            taken.append(np.asarray(X, dtype=np.float64))
            exact = exact and dtype == "float64" and X.dtype == np.float64
        assert np.array_equal(X, before, equal_nan=True)
    assert acc.n_samples == sum(len(x) for x in taken)
    if not taken:
        with pytest.warns(RuntimeWarning, match="no samples were added"):
            assert not acc.hessian().any()
        return
    H = acc.hessian()
    assert H.shape == (cols, cols) and H.dtype == np.dtype(dtype)
    assert np.array_equal(H, H.T), "H is not exactly symmetric"
    X = np.concatenate(taken)
    expected = (2.0 / len(X)) * (X.T @ X)
    tol = (1e-10 if exact else 1e-5) * (2.0 / len(X)) * (np.abs(X).T @ np.abs(X)) + 1e-30
    assert (np.abs(H - expected) <= tol * 8).all()
    assert (np.diag(H) >= 0).all()
