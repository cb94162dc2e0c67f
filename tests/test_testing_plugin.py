"""quantease.problems (layer problems from specs) and the quantease.testing pytest plugin, run in a fresh
pytest process on a small experiment file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import quantease
from quantease.problems import LayerProblem, llm_like, problem
from real_data import real_data_available

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(quantease.__file__)))


def test_synthetic_specs_and_relative_loss():
    p = problem("synthetic:32x128:3")
    assert isinstance(p, LayerProblem) and p.W.shape == (32, 128) and p.H.shape == (128, 128)
    assert p.group_size == 128 and p.n_tokens is None and p.name == "synthetic:32x128:3"
    np.testing.assert_array_equal(p.W, llm_like(32, 128, seed=3).W)
    assert problem("synthetic:32x192").group_size == 64 and problem("synthetic:8x100").group_size == -1
    assert not np.array_equal(problem("synthetic:32x128").W, p.W)  # seed 0 by default
    assert p.relative_loss(p.W) == 0 and p.relative_loss(np.zeros_like(p.W)) == pytest.approx(1.0)
    r = quantease.rtn(p.W, bits=3)
    assert p.relative_loss(r.weight) == pytest.approx(quantease.layer_loss(p.W, r.weight, p.H) / p.energy)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("synthetic:32", "problem spec must be"),
        ("gpt9:0.q_proj", "problem spec must be"),
        ("smollm2:0.attn.q", "smollm2 has no layer kind 'attn.q'"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        problem(spec)


EXPERIMENT = """
import pytest, quantease

def my_solver(W, H, *, bits, group_size):
    return quantease.gptq(W, H, bits=bits, group_size=group_size)

@pytest.mark.parametrize("layer_problem", ["synthetic:32x128", "synthetic:16x64:1"], indirect=True)
@pytest.mark.parametrize("bits", [3, 4])
def test_mine_against_rtn(layer_problem, experiment, bits):
    mine = experiment.run("mine", my_solver, layer_problem, bits=bits)
    rtn = experiment.run("rtn", quantease.rtn, layer_problem, bits=bits)
    assert layer_problem.relative_loss(mine.weight) < layer_problem.relative_loss(rtn.weight)
    assert [r.method for r in experiment.records] == ["mine", "rtn"]

def test_default_problem(layer_problem, experiment):
    assert layer_problem.name == "synthetic:256x512:0"
    experiment.record("zero", layer_problem, layer_problem.W * 0, seconds=0.0, note="all-zero weight")
"""


def test_plugin_fixtures_and_table(tmp_path):
    (tmp_path / "test_experiment.py").write_text(EXPERIMENT)
    out_json = tmp_path / "records.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_DIR, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "quantease.testing",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            f"--quantease-json={out_json}",
            str(tmp_path / "test_experiment.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout
    table = proc.stdout[proc.stdout.index("quantease experiment") :].splitlines()
    assert table[1].split() == ["test", "problem", "method", "settings", "rel.", "loss", "seconds"]
    rows = [line for line in table[3:] if line.startswith("test_")]
    assert len(rows) == 4 * 2 + 1
    assert any("synthetic:16x64:1" in r and " mine " in r and "bits=4, group_size=64" in r for r in rows)
    records = json.loads(out_json.read_text())
    assert len(records) == 9 and {r["method"] for r in records} == {"mine", "rtn", "zero"}
    zero = next(r for r in records if r["method"] == "zero")
    assert zero["relative_loss"] == pytest.approx(1.0) and zero["settings"] == {"note": "all-zero weight"}


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.skipif(
    not real_data_available(("smollm2-135m",), ("wiki",)),
    reason="real models/texts not in the cache (set QUANTEASE_REAL=1 to fetch them)",
)
def test_real_layer_problem_is_cached():
    p = problem("smollm2:0.self_attn.k_proj")
    assert p.W.shape == (192, 576) and p.H.shape == (576, 576) and p.group_size == 64 and p.n_tokens == 8192
    np.testing.assert_array_equal(p.H, p.H.T)
    assert np.all(np.diag(p.H) >= 0)
    again = problem("smollm2:0.self_attn.q_proj")  # the same block: from the cache, the same input's Hessian
    np.testing.assert_array_equal(again.H, p.H)
    g = quantease.gptq(p.W, p.H, bits=3, group_size=64)
    assert p.relative_loss(g.weight) < p.relative_loss(quantease.rtn(p.W, bits=3, group_size=64).weight)
