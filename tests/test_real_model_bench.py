"""bench/real_model.py, the README's main job: argument handling and tables (fast), and one run of its main
function on the real SmolLM2-135M and all-MiniLM-L6-v2 on a tiny configuration (marked real_model: runs
when the cache holds the models and texts, or with QUANTEASE_REAL=1)."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

import quantease
from real_data import real_data_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench():
    spec = importlib.util.spec_from_file_location("real_model_bench", os.path.join(ROOT, "bench", "real_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# ---------------------------------------------------------------------------------------------------------
# fast: arguments, solver discovery, tables
# ---------------------------------------------------------------------------------------------------------


def test_quick_and_full_defaults():
    quick = bench.parse_args(["--quick"])
    assert quick.methods == list(bench.METHODS) and quick.bits == [3] and quick.groups == [64]
    assert quick.quantease_iters == 10 and quick.max_blocks is None
    full = bench.parse_args([])
    assert full.bits == [4, 3] and full.groups == [64, -1] and full.quantease_iters is None
    assert (full.calib_samples, full.calib_len, full.eval_windows, full.eval_len) == (16, 512, 16, 512)
    mine = bench.parse_args(["--methods", "gptq,rtn", "--bits", "4", "--groups", "-1", "--max-blocks", "2"])
    assert mine.methods == ["gptq", "rtn"] and mine.bits == [4] and mine.groups == [-1] and mine.max_blocks == 2


@pytest.mark.parametrize(
    "argv",
    [["--methods", "gptq,awq"], ["--bits", "9"], ["--groups", "0"], ["--max-blocks", "0"], ["--eval-windows", "0"]],
)
def test_bad_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_available_solvers_follow_the_build(monkeypatch):
    have = bench.available_solvers(bench.METHODS)
    assert list(have) == [m for m in bench.METHODS if callable(getattr(quantease, bench.solver_of(m)[0], None))]
    assert {"rtn", "gptq", "easyquant"} <= set(have)
    monkeypatch.delattr(quantease, "quantease")
    assert not {"quantease", "quantease+gptq"} & set(bench.available_solvers(bench.METHODS))


def test_methods_map_to_solvers_with_fixed_options():
    quick = bench.parse_args(["--quick"])
    full = bench.parse_args([])
    assert bench._solver_kwargs("quantease", quick) == {"iters": 10}
    assert bench._solver_kwargs("quantease+gptq", quick) == {"init": "gptq", "iters": 10}
    assert bench._solver_kwargs("quantease", full) == {}
    assert bench._solver_kwargs("gptq", quick) == {"act_order": True}
    assert bench._solver_kwargs("rtn", quick) == {}
    # Every keyword is one the solver takes.
    import inspect

    for m in bench.METHODS:
        name, kwargs = bench.solver_of(m)
        assert set(bench._solver_kwargs(m, quick)) <= set(inspect.signature(getattr(quantease, name)).parameters)


def _fake_lm_result():
    rows = [
        {"method": "full precision", "bits": 32, "group": None, "status": "ok", "perplexity": 20.0, "ratio": 1.0},
        {
            "method": "rtn",
            "bits": 3,
            "group": 64,
            "status": "ok",
            "perplexity": 60.0,
            "ratio": 3.0,
            "mean_relative_loss": 0.05,
            "quantize_seconds": 1.0,
            "solver_seconds": 0.1,
        },
        {
            "method": "gptq",
            "bits": 3,
            "group": 64,
            "status": "ok",
            "perplexity": 50.0,
            "ratio": 2.5,
            "mean_relative_loss": 0.01,
            "quantize_seconds": 2.0,
            "solver_seconds": 1.0,
        },
        {"method": "quantease", "bits": 3, "group": 64, "status": bench.NOT_IN_BUILD},
        {"method": "leanquant", "bits": 3, "group": 64, "status": "failed: ValueError: boom", "quantize_seconds": 0.5},
    ]
    return {"rows": rows}


def test_tables_show_missing_and_failed_solvers():
    table = bench.lm_table(_fake_lm_result()).splitlines()
    assert len(table) == 2 + 5
    assert table[2].startswith("| full precision | 32 | - | 20.00 | 1.000 |")
    assert table[3].startswith("| rtn | 3 | 64 | 60.00 | 3.000 | 0.0500 |")
    assert table[5] == f"| quantease | 3 | 64 | {bench.NOT_IN_BUILD} | - | - | - | - |"
    assert table[6].startswith("| leanquant | 3 | 64 | failed: ValueError: boom |")
    claims = bench.claims(_fake_lm_result())
    assert claims[0].startswith("3-bit g64: gptq perplexity 50.00 vs rtn 60.00: lower (better)")
    assert claims[1] == "3-bit g64: quantease vs gptq: no figure for quantease"


# ---------------------------------------------------------------------------------------------------------
# the real models: main() on a tiny configuration
# ---------------------------------------------------------------------------------------------------------


def _real_available() -> bool:
    return real_data_available(("smollm2-135m", "all-minilm-l6-v2"), ("wiki", "lee"))


real = pytest.mark.skipif(
    not _real_available(), reason="real models/texts not in the cache (set QUANTEASE_REAL=1 to fetch them)"
)


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


@pytest.mark.real_model
@pytest.mark.slow
@real
def test_main_on_a_tiny_configuration(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    lines = []
    path = tmp_path / "out.json"
    out = bench.main(
        [
            "--methods",
            ",".join(bench.METHODS),
            "--bits",
            "3",
            "--groups",
            "64",
            "--max-blocks",
            "1",
            "--calib-samples",
            "2",
            "--calib-len",
            "64",
            "--eval-windows",
            "2",
            "--eval-len",
            "64",
            "--sentences",
            "8",
            "--calib-sentences",
            "8",
            "--quantease-iters",
            "2",
            "--json",
            str(path),
        ],
        log=lines.append,
    )
    text = "\n".join(lines)
    have = [m for m in bench.METHODS if callable(getattr(quantease, bench.solver_of(m)[0], None))]
    assert out["methods_available"] == have
    assert out["methods_missing"] == [m for m in bench.METHODS if m not in have]
    assert json.loads(path.read_text())["methods_available"] == have

    for key, metric in (("causal_lm", "perplexity"), ("encoder", "pooled")):
        rows = out[key]["rows"]
        # the full-precision row first, then one row per method, in order
        assert [r["method"] for r in rows] == ["full precision", *bench.METHODS]
        fp = rows[0]
        assert fp["status"] == "ok" and _finite(fp[metric])
        for r in rows[1:]:
            if r["method"] not in have:
                assert r["status"] == bench.NOT_IN_BUILD
                continue
            assert r["status"] == "ok", r["status"]
            assert (r["bits"], r["group"], r["layers"]) == (3, 64, 7 if key == "causal_lm" else 6)
            assert _finite(r[metric]) and _finite(r["quantize_seconds"]) and r["quantize_seconds"] > 0
            assert 0 < r["mean_relative_loss"] < 1
        by = {r["method"]: r for r in rows}
        # GPTQ minimises the layer objective that RTN ignores: on real Hessians it is far lower.
        assert by["gptq"]["mean_relative_loss"] < 0.5 * by["rtn"]["mean_relative_loss"]

    lm = out["causal_lm"]
    assert lm["full_precision"] == lm["rows"][0]["perplexity"] and 5 < lm["full_precision"] < 200
    for r in lm["rows"][1:]:
        if r["status"] == "ok":
            assert r["ratio"] == pytest.approx(r["perplexity"] / lm["full_precision"])
    enc = out["encoder"]["rows"]
    assert enc[0]["pooled"] == pytest.approx(1.0, abs=1e-9) and enc[0]["hidden"] == pytest.approx(1.0, abs=1e-9)
    for r in enc[1:]:
        if r["status"] == "ok":
            assert 0.5 < r["pooled"] < 1 and 0.5 < r["hidden"] < 1 and r["pooled_min"] <= r["pooled"]

    # the printed tables: a header, a rule, the FP row and one row per method each
    assert "| full precision | 32 | - |" in text
    for m in bench.METHODS:
        assert text.count(f"| {m} | 3 | 64 |") == 2  # one row in each table
        if m not in have:
            assert f"| {m} | 3 | 64 | {bench.NOT_IN_BUILD} |" in text
    assert "first 1 of 30 blocks quantized" in text and "first 1 of 6 blocks quantized" in text
