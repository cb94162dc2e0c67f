"""bench/pipeline.py: the paper estimate's arithmetic, and a smoke run on a tiny synthetic block read from disk
(one process; its figures mean nothing and are never reported: only their structure is checked)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import pipeline as bench  # noqa: E402  (bench/pipeline.py)


def test_estimate_scales_the_measured_block():
    # 1000 tokens through the block on 2 threads: forward + Hessian 3 s = 0.006 core-seconds per token.
    block = {"forward_s": 2.0, "hessian_s": 1.0, "solve_s": 4.0, "io_s": 0.5}
    seven_b = bench.MODELS["7B"]
    e = bench.estimate(block, tokens=1000, threads=2, n_tokens=10_000, machines=4, cores=8, model=seven_b)
    assert e["forward_hessian_s"] == pytest.approx(32 * 0.006 * 10_000 / 32)  # 32 blocks over 4 x 8 cores
    assert e["solve_s"] == pytest.approx(32 * 4.0 * 2 / (8 * 2))  # at most two owners, 8 cores instead of 2
    assert e["io_s"] == pytest.approx(32 * 0.5)
    assert e["total_s"] == pytest.approx(e["forward_hessian_s"] + e["solve_s"] + e["io_s"])
    seventy_b = bench.estimate(
        block, tokens=1000, threads=2, n_tokens=10_000, machines=4, cores=8, model=bench.MODELS["70B"]
    )
    assert seventy_b["forward_hessian_s"] == pytest.approx(e["forward_hessian_s"] * 80 / 32 * 5)
    one = bench.estimate(block, tokens=1000, threads=2, n_tokens=10_000, machines=1, cores=8, model=seven_b)
    assert one["forward_hessian_s"] == pytest.approx(4 * e["forward_hessian_s"]) and one["solve_s"] == 2 * e["solve_s"]


@pytest.mark.slow
def test_smoke_run_prints_the_split_and_the_labelled_estimate(tmp_path, capsys):
    import torch

    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # the script sets torch's thread count (--threads) in this process: the suite's other tests keep theirs
        bench.main(
            ["--models", "synthetic", "--hidden", "256", "--mlp", "704", "--samples", "2", "--seq-len", "32"]
            + ["--ranks", "1", "--offload", "--machines", "1,2", "--cores", "4", "--json", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "PAPER ESTIMATE, not a measurement" in printed and "not 7B-shaped" in printed
    assert "of the float32 GEMM" in printed
    figures = json.loads(out.read_text())
    (run,) = figures["runs"]
    (row,) = run["blocks"]
    assert run["tokens"] == 64 and row["tokens_per_s"] > 0
    for phase in ("forward_s", "hessian_s", "solve_s", "io_s"):  # io: the block read from and written to disk
        assert math.isfinite(row[phase]) and row[phase] > 0, (phase, row)
    assert row["total_s"] >= row["hessian_s"] + row["solve_s"] + row["io_s"]
    assert [(e["model"], e["machines"]) for e in figures["paper_estimate"]] == [
        ("7B", 1),
        ("7B", 2),
        ("70B", 1),
        ("70B", 2),
    ]
