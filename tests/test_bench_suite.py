"""bench/suite.py: its --quick path in-process (seconds), the structure of the table and the JSON, finite
figures, the machine description, the plot, and that a missing solver or peer is a row saying so.

quantease.quantease and quantease.leanquant may not be in this build yet: the plumbing of their rows is checked
with stand-ins injected through ``run_suite(solvers=...)`` (they call GPTQ; their figures mean nothing and are
never reported). The real-layer part (SmolLM2 Hessians) is marked real_model and runs when the model and the
corpus are cached or QUANTEASE_REAL=1, like tests/test_models_eval.py.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

import quantease

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

suite = pytest.importorskip("suite", reason="bench/suite.py not importable")


def stand_in_quantease(
    W,
    H,
    *,
    bits,
    group_size=-1,
    sym=False,
    act_order=True,
    iters=30,
    init="w",
    relaxed=True,
    tol=0.0,
    outliers=0.0,
    outlier_structure="unstructured",
    outlier_step=1.0,
    block_size=128,
):
    """Plumbing only: the signature of quantease.quantease, GPTQ inside."""
    res = quantease.gptq(W, H, bits=bits, group_size=group_size, sym=sym, act_order=act_order)
    res.iters = iters
    return res


def stand_in_leanquant(
    W, H, *, bits, grid="nonuniform", exponent=4.0, damp=0.1, act_order=True, group_size=-1, block_size=128, seed=0
):
    """Plumbing only: the signature of quantease.leanquant, GPTQ inside."""
    return quantease.gptq(W, H, bits=bits, group_size=group_size, act_order=act_order)


STAND_INS = {"quantease": stand_in_quantease, "leanquant": stand_in_leanquant}


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    lines = []
    # one tiny layer keeps this at seconds (the CLI's --quick has two)
    cfg = suite.Config(mode="quick", sets=("synthetic",), real="no", out_dir=out, shapes=((128, 256),))
    report = suite.run_suite(cfg, solvers=STAND_INS, log=lines.append)
    return report, "\n".join(lines), out


def test_quick_report_structure(quick):
    report, text, out = quick
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["python"] and m["numpy"] and "load_1min" in m
    assert _finite(report["gemm_gflops"]) and report["gemm_gflops"] > 0
    assert report["solvers"]["gptq"] == "built" and report["solvers"]["quantease"] == "injected"
    (syn,) = report["sets"]
    assert syn["name"] == "synthetic" and [L["name"] for L in syn["layers"]] == ["128x256"]
    ok = [r for r in syn["records"] if r["status"] == "ok"]
    assert not [r for r in syn["records"] if r["status"] != "ok"], "no solver or peer may fail on the quick set"
    solvers = {r["solver"] for r in ok}
    assert {"rtn", "gptq", "quantease", "easyquant", "leanquant", "gptq-torch"} <= solvers
    for r in ok:
        assert _finite(r["seconds"]) and r["seconds"] > 0
        if r.get("rel_loss") is not None:
            assert _finite(r["rel_loss"]) and 0 <= r["rel_loss"] < 1, r
        for k in ("gflops", "gemm_share", "hot_gflops", "speedup"):
            if k in r:
                assert _finite(r[k]) and r[k] > 0, (k, r)
    # every GPTQ solve has a flop rate, and the hot loop (column loop) was timed by the core
    for r in ok:
        if r["solver"] == "gptq":
            assert _finite(r["gflops"]) and _finite(r["hot_gemm_share"])
    # bits x layers x variants: every (layer, method) row of the quick set is there at 3 and 4 bits
    for layer in ("128x256",):
        for method in ("RTN g128", "GPTQ", "GPTQ act g128", "QuantEase", "EasyQuant g128", "LeanQuant nu"):
            assert {r["bits"] for r in ok if r["layer"] == layer and r["method"] == method} == {3, 4}, (layer, method)


def test_quick_peers_and_speedups(quick):
    report, text, _ = quick
    syn = report["sets"][0]
    ok = [r for r in syn["records"] if r["status"] == "ok"]
    gptq = [r for r in ok if r["solver"] == "gptq"]
    assert gptq and all(r["peer"] == "gptq-torch" and _finite(r["speedup"]) for r in gptq)
    # our GPTQ and the reference port solve the same problem: equal loss within 2 %
    assert all(r["equal_loss"] for r in gptq), [
        (r["layer"], r["method"], r["rel_loss"], r["peer_rel_loss"]) for r in gptq if not r["equal_loss"]
    ]
    peer_rows = [r for r in ok if r["method"].startswith("[peer]")]
    assert {r["solver"] for r in peer_rows} >= {"gptq-torch", "quantease-torch", "leanquant-torch"}
    # HQQ: either it ran next to EasyQuant, or there is a row saying why it cannot
    hqq_status = report["peers"]["hqq"]
    if hqq_status.startswith("ok"):
        assert any(r["solver"] == "hqq" for r in peer_rows)
    else:
        assert hqq_status.startswith("not installable:")
        assert any(st["solver"] == "hqq" and st["status"].startswith("not installable:") for st in syn["status_rows"])


def test_quick_table_summary_targets_files(quick):
    report, text, out = quick
    assert "rel.loss" in text and "GFLOP/s" in text and "speed-up" in text and "## targets" in text
    syn = report["sets"][0]
    assert syn["table"] and all(_finite(r["seconds"]) for r in syn["table"])
    assert {r["method"] for r in syn["table"]} >= {"GPTQ", "QuantEase", "[peer] torch GPTQ port (GPTQ)"}
    ratios = {(x["method"], x["bits"]): x["median"] for x in report["summary"]["loss_ratio_vs_gptq"]}
    assert ("RTN g", 4) in ratios and all(_finite(v) and v > 0 for v in ratios.values())
    names = [t["target"] for t in report["targets"]]
    assert len(names) == 7
    for t in report["targets"]:
        assert t["status"] in ("PASS", "MISS", "n/a")
        assert t["figure"] is None or _finite(t["figure"])
    # no real layers in this run: the three QuantEase-beats-GPTQ targets have no data
    assert [t["status"] for t in report["targets"][-3:]] == ["n/a"] * 3
    data = json.loads((out / "suite-quick.json").read_text())
    assert data["machine"]["cpu"] == report["machine"]["cpu"]
    assert data["sets"][0]["table"] == json.loads(json.dumps(syn["table"]))
    png = out / "suite-quick.png"
    if report.get("plot", "").startswith("no plot"):
        pytest.skip(report["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_solver_and_peer_are_rows(tmp_path, monkeypatch):
    lines = []
    cfg = suite.Config(
        mode="quick",
        sets=("synthetic",),
        real="no",
        methods=("gptq", "quantease", "leanquant"),
        bits=(4,),
        out_dir=tmp_path,
        plot=False,
        shapes=((128, 256),),
    )
    orig = suite.Peers._probe

    def probe(self, name):
        return "not installable: test says so" if name == "gptq-torch" else orig(self, name)

    monkeypatch.setattr(suite.Peers, "_probe", probe)
    report = suite.run_suite(cfg, solvers={"quantease": None, "leanquant": None}, log=lines.append)
    syn = report["sets"][0]
    missing = {st["method"] for st in syn["status_rows"] if st["status"] == "not in this build"}
    assert {"QuantEase", "QuantEase init GPTQ", "LeanQuant nu", "LeanQuant affine g128"} <= missing
    assert not any(r["solver"] in ("quantease", "leanquant") for r in syn["records"])
    assert report["solvers"]["quantease"] == "not in this build"
    text = "\n".join(lines)
    assert "not in this build" in text and "not installable: test says so" in text
    assert all(r["status"] == "ok" and "speedup" not in r for r in syn["records"] if r["solver"] == "gptq")
    assert report["targets"][0]["status"] == "n/a"


def test_cli_quick_no_peers(tmp_path):
    report = suite.main(
        [
            "--quick",
            "--sets",
            "synthetic",
            "--methods",
            "rtn",
            "--bits",
            "3",
            "--no-peers",
            "--real",
            "no",
            "--no-plot",
            "--out",
            str(tmp_path),
        ]
    )
    assert (tmp_path / "suite-quick.json").exists() and report["peers"] == {}
    assert {r["bits"] for r in report["sets"][0]["records"]} == {3}


def test_flops():
    from flops import gptq_flops, leanquant_flops, quantease_flops

    q = quantease_flops(100, 50, 30)
    assert q["total"] == pytest.approx(2 * 100 * 50**2 * 31)
    assert quantease_flops(100, 50, 30, outliers=True)["per_sweep"] == 2 * q["per_sweep"]
    lq = leanquant_flops(100, 50, 3)
    assert lq["total"] > gptq_flops(100, 50)["total"] and lq["kmeans"] > 0


def _real_available() -> bool:
    if os.environ.get("QUANTEASE_REAL") == "1":
        return True
    import real_layers

    return real_layers.real_available("smollm2")


@pytest.mark.real_model
@pytest.mark.skipif(not _real_available(), reason="SmolLM2 / lee not in the cache (set QUANTEASE_REAL=1)")
def test_quick_real_layers(tmp_path):
    cfg = suite.Config(mode="quick", sets=("smollm2",), real="yes", out_dir=tmp_path, peers=False, plot=False)
    report = suite.run_suite(cfg, solvers=STAND_INS, log=lambda *a: None)
    (s,) = report["sets"]
    assert [L["name"] for L in s["layers"]] == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    assert [(L["rows"], L["cols"]) for L in s["layers"]] == [(576, 576), (576, 1536)]
    assert s["group_size"] == 64 and all(r["status"] == "ok" for r in s["records"])
    gptq = [r for r in s["records"] if r["method"] == "GPTQ act g64"]
    rtn = {(r["layer"], r["bits"]): r for r in s["records"] if r["method"] == "RTN g64"}
    assert len(gptq) == 4
    for r in gptq:  # a real Hessian: GPTQ beats RTN on every layer and bit width
        assert 0 < r["rel_loss"] < rtn[(r["layer"], r["bits"])]["rel_loss"]
    assert all(row["layer"] == "2 layers" for row in s["table"])
    beats = report["summary"]["quantease_beats_gptq"]
    assert {(x["method"], x["bits"]) for x in beats} >= {("QuantEase", 3), ("QuantEase", 4)}
