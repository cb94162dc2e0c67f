"""bench/real_model.py, the README's main job: argument handling and tables (fast), and one run of its main
function on the real SmolLM2-135M and all-MiniLM-L6-v2 on a tiny configuration (marked real_model: runs
when the cache holds the models and texts, or with QUANTEASE_REAL=1)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

import quantease
from real_data import real_data_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench():
    spec = importlib.util.spec_from_file_location("real_model_bench", os.path.join(ROOT, "bench", "real_model.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# ---------------------------------------------------------------------------------------------------------
# fast: arguments, methods, the noise, tables
# ---------------------------------------------------------------------------------------------------------


def test_quick_and_full_defaults():
    full = bench.parse_args([])
    assert full.methods == list(bench.METHODS) and full.bits == 3 and full.group == 64 and full.seeds == [0]
    assert (full.calib_windows, full.eval_windows, full.heldout_windows) == (16, 32, 8)
    assert full.quantease_iters is None and full.max_blocks is None
    quick = bench.parse_args(["--quick"])
    assert (quick.calib_windows, quick.eval_windows, quick.heldout_windows, quick.quantease_iters) == (4, 4, 2, 4)
    mine = bench.parse_args(["--methods", "gptq,rtn", "--bits", "4", "--group", "-1", "--seeds", "0,1,2"])
    assert mine.methods == ["gptq", "rtn"] and mine.bits == 4 and mine.group == -1 and mine.seeds == [0, 1, 2]


@pytest.mark.parametrize(
    "argv",
    [
        ["--methods", "gptq,awq"],
        ["--bits", "9"],
        ["--group", "0"],
        ["--max-blocks", "0"],
        ["--eval-windows", "0"],
        ["--heldout-windows", "40"],
        ["--seeds", ""],
        ["--threads", "0"],
    ],
)
def test_bad_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_methods_map_to_solvers_with_fixed_options(monkeypatch):
    import inspect

    args = bench.parse_args([])
    assert bench.solver_kwargs("quantease-paper", args) == {}
    assert bench.solver_kwargs("gptq", args) == {"act_order": True}
    assert bench.group_of("leanquant", args) == -1 and bench.group_of("gptq", args) == 64
    assert bench.solver_kwargs("quantease", bench.parse_args(["--quick"]))["iters"] == 4
    for m, spec in bench.METHODS.items():  # every keyword is one the solver takes
        assert set(bench.solver_kwargs(m, args)) <= set(inspect.signature(getattr(quantease, spec.solver)).parameters)
    assert {m for m, spec in bench.METHODS.items() if not spec.needs_data} == {"rtn", "easyquant"}
    assert bench.available_methods(bench.METHODS) == list(bench.METHODS)
    monkeypatch.delattr(quantease, "quantease")
    assert not {"quantease", "quantease-paper"} & set(bench.available_methods(bench.METHODS))


def _run(seed, nll, **kw):
    nll = np.asarray(nll, dtype=float)
    ppl = float(np.exp(nll.mean()))
    return {
        "seed": seed,
        "window_nll": nll.tolist(),
        "perplexity": ppl,
        "se": ppl * nll.std(ddof=1) / math.sqrt(nll.size),
        **kw,
    }


def _row(method, runs, status="ok", **kw):
    return {"method": method, "stores": "affine grid", "status": status, "bits_per_weight": 3.3, "runs": runs, **kw}


def test_difference_pairs_windows_and_seeds():
    base = np.array([3.0, 3.5, 2.5, 4.0, 3.2, 2.8])
    a = _row("a", [_run(0, base - 0.10), _run(1, base - 0.12)])
    b = _row("b", [_run(0, base), _run(1, base)])
    d = bench.difference(a, b)
    # paired: the window-to-window difficulty cancels; only the tiny seed spread and no window spread remain
    assert d["seeds"] == 2 and d["log_ratio"] == pytest.approx(-0.11)
    assert d["se"] == pytest.approx(math.sqrt(np.var([-0.10, -0.12], ddof=1) / 2), rel=1e-6)
    assert bench.verdict(d) == "lower (better)"
    # a row run once (no calibration data) pairs with every seed of the other
    rtn = _row("rtn", [_run(None, base + 0.3)])
    d = bench.difference(a, rtn)
    assert d["seeds"] == 2 and d["log_ratio"] == pytest.approx(-0.41)
    # noisy windows: the same mean difference is within noise
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.5, base.size)
    d = bench.difference(_row("n", [_run(0, base - 0.10 + noise)]), _row("b", [_run(0, base)]))
    assert d["se"] == pytest.approx(np.std(noise, ddof=1) / math.sqrt(base.size), rel=1e-6)
    assert bench.verdict(d) == "within noise" and abs(d["log_ratio"]) < 2 * d["se"]
    assert bench.change({"log_ratio": math.log(0.9), "se": 0.01}) == "-10.0 % [-11.8, -8.2]"
    assert bench.difference(_row("x", [], status=bench.NOT_IN_BUILD), b) is None
    assert bench.verdict(None) == "no figure"


def _fake_lm_result():
    base = [3.0, 3.5, 2.5, 4.0]
    rows = [
        _row("full precision", [_run(None, base)], stores="float32 weights"),
        _row("rtn", [_run(None, [b + 1.0 for b in base], heldout_loss=0.04, quantize_seconds=1.0)]),
        _row(
            "gptq",
            [
                _run(0, [b + 0.5 for b in base], heldout_loss=0.02, calib_loss=0.01, quantize_seconds=2.0),
                _run(1, [b + 0.52 for b in base], heldout_loss=0.02, calib_loss=0.01, quantize_seconds=2.0),
            ],
        ),
        _row("quantease", [], status=bench.NOT_IN_BUILD),
        _row("leanquant", [], status="failed: ValueError: boom"),
    ]
    return {"rows": rows}


def test_tables_and_claims():
    table = bench.lm_table(_fake_lm_result()).splitlines()
    assert len(table) == 2 + 5
    assert table[2].startswith("| full precision | float32 weights | 3.30 | ")
    assert table[3].startswith("| rtn | affine grid | 3.30 | ") and "| - | 2.72 | 0.0400 | - | 1 |" in table[3]
    assert table[4].startswith("| gptq | affine grid | 3.30 | 42.95 ± ") and "| 42.52-43.38 | 1.67 |" in table[4]
    assert table[5] == f"| quantease | affine grid | 3.30 | {bench.NOT_IN_BUILD} | - | - | - | - | - |"
    assert table[6].startswith("| leanquant | affine grid | 3.30 | failed: ValueError: boom |")
    lines = bench.claims(_fake_lm_result())
    assert lines[0].startswith("gptq vs rtn: perplexity ") and "lower (better)" in lines[0]
    assert "2 seeds" in lines[0] and "held-out 0.0200 vs 0.0400" in lines[0]
    assert lines[1].startswith("quantease vs gptq: no figure for quantease (not in this build)")
    assert lines[-1].startswith("leanquant vs gptq: no figure for leanquant (failed: ValueError: boom)")


def test_phase_split_adds_up():
    out = {
        "total_seconds": 100.0,
        "causal_lm": {
            "info": {"load_seconds": 5.0},
            "rows": [
                {"runs": [{"eval_seconds": 3.0}]},
                {
                    "runs": [
                        {
                            "phase_seconds": {"forward": 10.0, "hessian": 2.0, "solve": 4.0, "loss": 1.0, "other": 0.5},
                            "eval_seconds": 6.0,
                        }
                    ]
                },
            ],
        },
        "encoder": {
            "rows": [
                {
                    "runs": [
                        {
                            "phase_seconds": {"forward": 1.0, "hessian": 0.0, "solve": 2.0, "loss": 0.0, "other": 0.0},
                            "eval_seconds": 1.0,
                        }
                    ]
                }
            ]
        },
    }
    split = bench.phase_split(out)
    assert split == {
        "forward": 11.0,
        "hessian": 2.0,
        "solve": 6.0,
        "loss": 1.0,
        "other": 0.5,
        "evaluation": 10.0,
        "load": 5.0,
        "rest": 64.5,
    }


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
            "--max-blocks",
            "1",
            "--window",
            "64",
            "--calib-windows",
            "2",
            "--seeds",
            "0,1",
            "--eval-windows",
            "3",
            "--heldout-windows",
            "2",
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
    have = bench.available_methods(bench.METHODS)
    assert out["methods_available"] == have and json.loads(path.read_text())["methods_available"] == have

    for key, metric in (("causal_lm", "perplexity"), ("encoder", "pooled")):
        rows = out[key]["rows"]
        methods = [r["method"] for r in rows]
        assert methods == (["full precision"] if key == "causal_lm" else []) + list(bench.METHODS)
        for r in rows:
            if r["method"] == "full precision":
                continue
            assert r["status"] == "ok", r["status"]
            spec = bench.METHODS[r["method"]]
            # methods without calibration data run once; the others once per seed (the encoder: one set)
            seeds = [None] if not spec.needs_data else [0, 1] if key == "causal_lm" else [0]
            assert [run["seed"] for run in r["runs"]] == seeds
            for run in r["runs"]:
                assert run["layers"] == (7 if key == "causal_lm" else 6) and _finite(run[metric])
                assert (run["calib_loss"] is None) == (not spec.needs_data)
                assert spec.needs_data or run["phase_seconds"]["forward"] == 0
            assert 3 < r["bits_per_weight"] < 6
        by = {r["method"]: bench.summarize(r) for r in rows}
        # GPTQ minimises the layer objective that RTN ignores: on real data its held-out loss is far lower
        if key == "causal_lm":
            assert by["gptq"]["heldout_loss"] < 0.7 * by["rtn"]["heldout_loss"]
            assert all(0 < by[m]["heldout_loss"] < 1 for m in bench.METHODS)

    lm = out["causal_lm"]["rows"]
    fp = lm[0]["runs"][0]
    assert 5 < fp["perplexity"] < 200 and fp["se"] > 0 and len(fp["window_nll"]) == 3
    enc = out["encoder"]["rows"]
    for r in enc:
        s = bench.summarize(r)
        assert 0.5 < s["pooled"] < 1 and 0.5 < s["hidden"] < 1 and s["pooled_min"] <= s["pooled"]
    assert out["phase_seconds"]["evaluation"] > 0 and out["phase_seconds"]["forward"] > 0
    assert sum(out["phase_seconds"].values()) == pytest.approx(out["total_seconds"], rel=1e-6)

    # the printed tables and verdicts
    for m in bench.METHODS:
        assert text.count(f"| {m} | ") == 2  # one row in each table
    assert [line.split(":")[0] for line in out["claims"]] == [f"{a} vs {b}" for a, b in bench.CLAIMS]
    assert all(
        "2 s.e." in line and any(v in line for v in ("within noise", "lower (better)", "HIGHER (worse)"))
        for line in out["claims"]
    )
    assert "first 1 of 30 blocks quantized" in text and "first 1 of 6 blocks quantized" in text
    assert "total " in text and "evaluation " in text
