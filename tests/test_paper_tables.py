"""bench/paper_tables.py: the seeds' table shapes, one quantization per distinct cell, and the claims' verdicts
from the main job's noise model (fake rows; the real run is the bench itself)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pt = _load("paper_tables")
rm = sys.modules["real_model"]


def test_table_shapes_and_distinct_quantizations():
    qe = pt.TABLES["quantease"]
    assert [c.title for c in qe.columns] == [
        "4-bit",
        "3-bit",
        "3-bit + 1 % structured outliers",
        "3-bit + 1 % unstructured outliers",
    ]
    assert [r for r, _ in qe.rows] == ["RTN", "GPTQ", "QuantEase (paper schedule)", "QuantEase (ours: from GPTQ)"]
    assert [c.bits for c in pt.TABLES["leanquant"].columns] == [4, 3, 2]
    todo = pt.configs(list(pt.TABLES.values()), -1)
    keys = [(c.method, c.bits, tuple(sorted(c.extra.items()))) for c in todo]
    assert len(keys) == len(set(keys))
    # QuantEase 8 + 2 outlier cells, EasyQuant 1 new (RTN/GPTQ 4-bit shared), LeanQuant 1 GPTQ 2-bit + 6
    assert len(todo) == 8 + 2 + 1 + 7
    assert ("quantease-paper", 3, (("outlier_structure", "structured"), ("outliers", 0.01))) in keys
    assert ("gptq", 3, (("outlier_structure", "structured"), ("outliers", 0.01))) not in keys
    assert all(c.group == -1 for c in todo)
    assert rm.METHODS["leanquant-affine"].kwargs == {"grid": "affine"}


def _row(label, shift, se=0.02, seed=0, status="ok", **kw):
    rng = np.random.default_rng(zlib.crc32(label.encode()))  # hash() of a str changes with every process
    base = np.linspace(3.0, 4.0, 16)
    nll = base + shift + rng.normal(0, se, base.size)
    return {
        "method": label,
        "status": status,
        "bits_per_weight": 3.1,
        "runs": [{"seed": seed, "window_nll": nll.tolist(), "perplexity": float(np.exp(nll.mean())), "se": 0.1}],
        **kw,
    }


def test_claims_held_not_held_and_within_noise():
    rows = {
        "rtn 4-bit": _row("rtn 4-bit", 0.30, seed=None),
        "gptq 4-bit": _row("gptq 4-bit", 0.10),
        "easyquant 4-bit": _row("easyquant 4-bit", 0.10, seed=None, outlier_fraction=0.004),
    }
    cell = pt._lookup(pt.TABLES["easyquant"], rows, -1)
    lines = pt.claims("easyquant", cell, "per channel")
    assert lines[0].startswith("EasyQuant (data-free) beats RTN") and lines[0].endswith("-> held")
    assert lines[1].endswith("-> held (within noise)")  # "comparable": within noise holds
    assert lines[2] == "outliers below 1 % of the weights: 0.40 % -> held"
    rows["easyquant 4-bit"] = _row("easyquant 4-bit", 0.40, seed=None, outlier_fraction=0.02)
    lines = pt.claims("easyquant", pt._lookup(pt.TABLES["easyquant"], rows, -1), "per channel")
    assert lines[0].endswith("-> NOT held") and lines[1].endswith("-> NOT held") and lines[2].endswith("NOT held")
    # a missing cell: no figure
    del rows["gptq 4-bit"]
    lines = pt.claims("easyquant", pt._lookup(pt.TABLES["easyquant"], rows, -1), "per channel")
    assert lines[1].endswith(": no figure")


def test_lm_table_layout():
    rows = [_row("full precision", 0.0, seed=None)]
    rows += [_row(f"{m} {b}-bit", 0.1 * b) for m in ("gptq", "leanquant", "leanquant-affine") for b in (4, 3, 2)]
    text = pt.lm_table(pt.TABLES["leanquant"], {"rows": rows}, -1).splitlines()
    assert text[0] == "| method | full precision | 4-bit | 3-bit | 2-bit |"
    assert len(text) == 2 + 3 and text[2].startswith("| GPTQ | ") and "(3.10 b/w)" in text[2]
    assert text[3].startswith("| LeanQuant non-uniform |  | ")
    assert math.isfinite(rm.summarize(rows[1])["perplexity"])
