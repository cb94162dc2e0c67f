"""bench/quantease_accuracy.py: the study runs on small problems and its summary is what the records say."""

from __future__ import annotations

import sys
from pathlib import Path

import problems

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quantease_accuracy as qa  # noqa: E402


def test_summary_counts_and_ratios():
    ps = [(f"p{s}", *(lambda p: (p.W, p.H))(problems.llm_like(16, 64, seed=s))) for s in range(3)]
    configs = {k: qa.CONFIGS[k] for k in ("gptq act", "gptq", "quantease", "quantease init gptq")}
    records = qa.run(ps, bits=(3,), configs=configs, log=lambda *a: None)
    assert len(records) == 3
    rows = {(r["config"], r["reference"]): r for r in qa.summary(records)}
    r = rows[("quantease init gptq", "gptq act")]
    assert r["layers"] == 3 and r["max"] <= 1.0  # init="gptq" is never above GPTQ
    x = [rec["loss"]["quantease"] / rec["loss"]["gptq act"] for rec in records]
    q = rows[("quantease", "gptq act")]
    assert q["below"] == sum(v < 1 for v in x) / 3 and q["min"] == min(x) and q["max"] == max(x)
    assert ("quantease mse", "gptq act mse") not in rows  # rows of configurations that did not run are left out
