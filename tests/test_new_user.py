"""What a new user ran into: an empty accumulator's Hessian, and bfloat16 torch tensors as inputs."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import problems
import quantease

P = problems.dead_columns(16, 64, seed=5)

EMPTY_H = (
    "H is zero on its whole diagonal, so no calibration input reached this layer (an empty "
    "HessianAccumulator, n_samples == 0, gives this): add() the layer's inputs before hessian()"
)

SOLVERS_ON_H = {
    "gptq": lambda W, H: quantease.gptq(W, H, bits=4),
    "gptq_reference": lambda W, H: quantease.gptq(W, H, bits=4, reference=True),
    "quantease": lambda W, H: quantease.quantease(W, H, bits=4, iters=2),
    "leanquant": lambda W, H: quantease.leanquant(W, H, bits=4),
    "leanquant_affine": lambda W, H: quantease.leanquant(W, H, bits=4, grid="affine"),
}


def test_empty_accumulator_warns():
    acc = quantease.HessianAccumulator(64)
    with pytest.warns(RuntimeWarning, match=re.escape("no samples were added (n_samples == 0)")):
        H = acc.hessian()
    assert not H.any()
    acc.add(P.X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.hessian()


@pytest.mark.parametrize("solver", sorted(SOLVERS_ON_H))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_solvers_refuse_an_all_zero_hessian(solver, dtype):
    # before: every column counted as dead, W came back zeroed with loss 0 and no word said
    with pytest.raises(ValueError, match=re.escape(EMPTY_H)):
        SOLVERS_ON_H[solver](P.W, np.zeros((64, 64), dtype))


@pytest.mark.parametrize("solver", sorted(SOLVERS_ON_H))
def test_one_live_column_is_enough(solver):
    H = np.zeros((64, 64), np.float32)
    H[5, 5] = 2.0
    r = SOLVERS_ON_H[solver](P.W, H)
    assert np.isfinite(r.weight).all() and r.loss >= 0


def test_the_loss_takes_any_hessian():
    assert quantease.layer_loss(P.W, 0.5 * P.W, np.zeros((64, 64))) == 0.0
    assert quantease.easyquant(P.W, bits=4, steps=5, H=np.zeros((64, 64))).loss == 0.0


# --- torch tensors: bfloat16 (no NumPy type), requires_grad -----------------------------------------------

torch = pytest.importorskip("torch")


def _bf16(a: np.ndarray):
    return torch.from_numpy(a).to(torch.bfloat16)


def _exact_float32(a: np.ndarray) -> np.ndarray:
    """a rounded to bfloat16 and back: what a bfloat16 tensor of it holds, in float32."""
    return _bf16(a).float().numpy()


ALL_SOLVERS = {
    **SOLVERS_ON_H,
    "rtn": lambda W, H: quantease.rtn(W, bits=4, group_size=16),
    "easyquant": lambda W, H: quantease.easyquant(W, bits=4, steps=5, H=H),
}


@pytest.mark.parametrize("solver", sorted(ALL_SOLVERS))
def test_bfloat16_weights_and_hessian_are_read_as_float32(solver):
    W32, H32 = _exact_float32(P.W), _exact_float32(P.H)
    H32 = (H32 + H32.T) / 2  # rounding keeps it symmetric; this only makes sure
    expected = ALL_SOLVERS[solver](W32, H32)
    got = ALL_SOLVERS[solver](_bf16(W32), _bf16(H32))
    np.testing.assert_array_equal(got.weight, expected.weight)
    np.testing.assert_array_equal(got.codes, expected.codes)


def test_bfloat16_calibration_inputs_and_loss():
    X = _exact_float32(P.X)
    acc16, acc32 = quantease.HessianAccumulator(64), quantease.HessianAccumulator(64)
    acc16.add(_bf16(X))
    acc32.add(X)
    np.testing.assert_array_equal(acc16.hessian(), acc32.hessian())
    W = _exact_float32(P.W)
    assert quantease.layer_loss(_bf16(W), _bf16(0.5 * W), P.H) == quantease.layer_loss(W, 0.5 * W, P.H)


def test_tensors_that_require_grad_and_their_inputs_unchanged():
    W = torch.from_numpy(P.W.copy()).requires_grad_(True)
    r = quantease.gptq(W, torch.from_numpy(P.H), bits=4)
    np.testing.assert_array_equal(r.weight, quantease.gptq(P.W, P.H, bits=4).weight)
    np.testing.assert_array_equal(W.detach().numpy(), P.W)


def test_a_dtype_numpy_lacks_is_named():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    W = torch.zeros((4, 8), dtype=torch.float8_e4m3fn)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "W must be a real floating-point array (float16/float32/"
            "float64), got a torch tensor of torch.float8_e4m3fn; "
            "convert it with W.float()"
        ),
    ):
        quantease.rtn(W)
