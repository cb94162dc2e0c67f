"""The seeds' own tables on SmolLM2-135M (and all-MiniLM-L6-v2): the rows and columns each paper reports, every
claim of the paper next to our figure, held or not held.

    python bench/paper_tables.py                         # all three tables (long: 18 quantizations of SmolLM2)
    python bench/paper_tables.py --tables easyquant      # one table
    python bench/paper_tables.py --quick                 # a smoke run (figures are noise)

* QuantEase (Behdin et al. 2023): perplexity at full precision, 4 bits, 3 bits, 3 bits + 1 % structured
  outliers (whole columns), 3 bits + 1 % unstructured outliers; rows RTN, GPTQ, QuantEase. Per channel (one
  grid per row), as the paper.
* EasyQuant (Tang et al. 2023): 4 bits per channel, RTN / GPTQ / EasyQuant (symmetric, data-free).
* LeanQuant (Zhang & Shrivastava 2024): 2, 3 and 4 bits, GPTQ against LeanQuant's non-uniform grid (one
  codebook per row) and its affine grid (per channel).

Every figure is measured the way bench/real_model.py (the main job) measures it: the same calibration windows
of the wiki train split, the same evaluation windows of its test split, perplexity ± its standard error over
windows, and a verdict only when the paired difference exceeds twice its standard error (windows and
calibration seeds together): "held", "NOT held" (the opposite, beyond the noise) or "not shown" (within
noise). A quantization is run once even when several tables show it. The papers measured billion-parameter
models; SmolLM2-135M at 3 bits and below is a harsher setting, so a claim "not shown" here is a statement about
this model, not about the paper's.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import real_model as rm  # noqa: E402  (bench/real_model.py: the main job's runs and noise)

OUTLIERS_STRUCTURED = {"outliers": 0.01, "outlier_structure": "structured"}
OUTLIERS_UNSTRUCTURED = {"outliers": 0.01}


@dataclass(frozen=True)
class Column:
    title: str
    bits: int
    extra: Tuple[Tuple[str, Any], ...] = ()  # extra solver options (hashable)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: Tuple[Tuple[str, str], ...]  # (row label, method of real_model.METHODS)
    columns: Tuple[Column, ...]
    only: Tuple[Tuple[str, str], ...] = ()  # (row label, column title) pairs to run where columns are row-specific


def _extra(d: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


TABLES = {
    "quantease": Table(
        "quantease",
        "QuantEase (arXiv 2309.01885): perplexity, per channel",
        (
            ("RTN", "rtn"),
            ("GPTQ", "gptq"),
            ("QuantEase (paper schedule)", "quantease-paper"),
            ("QuantEase (ours: from GPTQ)", "quantease"),
        ),
        (
            Column("4-bit", 4),
            Column("3-bit", 3),
            Column("3-bit + 1 % structured outliers", 3, _extra(OUTLIERS_STRUCTURED)),
            Column("3-bit + 1 % unstructured outliers", 3, _extra(OUTLIERS_UNSTRUCTURED)),
        ),
        # the outlier columns belong to the outlier-aware QuantEase only
        only=tuple(
            (row, col)
            for row in ("RTN", "GPTQ", "QuantEase (paper schedule)", "QuantEase (ours: from GPTQ)")
            for col in ("4-bit", "3-bit")
        )
        + (
            ("QuantEase (paper schedule)", "3-bit + 1 % structured outliers"),
            ("QuantEase (paper schedule)", "3-bit + 1 % unstructured outliers"),
        ),
    ),
    "easyquant": Table(
        "easyquant",
        "EasyQuant (arXiv 2403.02775): perplexity, 4-bit per channel",
        (("RTN", "rtn"), ("GPTQ", "gptq"), ("EasyQuant", "easyquant")),
        (Column("4-bit", 4),),
    ),
    "leanquant": Table(
        "leanquant",
        "LeanQuant (arXiv 2407.10032): perplexity, per channel",
        (("GPTQ", "gptq"), ("LeanQuant non-uniform", "leanquant"), ("LeanQuant affine", "leanquant-affine")),
        (Column("4-bit", 4), Column("3-bit", 3), Column("2-bit", 2)),
    ),
}

# LeanQuant's affine grid is a table row of its own (the main job runs the non-uniform one).
rm.METHODS.setdefault(
    "leanquant-affine", rm.Method("leanquant-affine", "leanquant", {"grid": "affine"}, "affine grid, act-order")
)


def _cells(table: Table) -> List[Tuple[str, Column]]:
    cells = [(row, col) for row, _ in table.rows for col in table.columns]
    if table.only:
        cells = [(row, col) for row, col in cells if (row, col.title) in table.only]
    return cells


def _key(method: str, col: Column, group: int) -> Tuple[str, int, int, Tuple[Tuple[str, Any], ...]]:
    return (method, col.bits, group, col.extra)


def configs(tables: Sequence[Table], group: int) -> List[rm.Config]:
    """Every quantization the tables need, once each."""
    out: Dict[Any, rm.Config] = {}
    for table in tables:
        methods = dict(table.rows)
        for row, col in _cells(table):
            method = methods[row]
            key = _key(method, col, group)
            if key not in out:
                label = f"{method} {col.bits}-bit" + "".join(f" {k}={v}" for k, v in col.extra)
                out[key] = rm.Config(label, method, col.bits, group, dict(col.extra))
    return list(out.values())


# ------------------------------------------------------------------------------------------------ claims


def _claim(text: str, diff: Optional[Dict[str, float]], want_lower: bool = True, comparable: bool = False) -> str:
    """'held' / 'NOT held' / 'not shown (within noise)' for "a is lower than b" (or "a is not worse than b"
    with ``comparable``), from the paired difference and its noise."""
    if diff is None:
        return f"{text}: no figure"
    change = rm.change(diff)
    v = rm.verdict(diff)
    if v == "within noise":
        status = "held (within noise)" if comparable else "not shown (within noise)"
    elif (v == "lower (better)") == want_lower:
        status = "held"
    else:
        status = "NOT held"
    return f"{text}: {change} -> {status}"


def claims(name: str, cell: Callable[[str, str], Optional[Dict[str, Any]]], group_label: str) -> List[str]:
    """The paper's claims for table ``name``; ``cell(row label, column title)`` is the measured row."""

    def diff(a: Tuple[str, str], b: Tuple[str, str]) -> Optional[Dict[str, float]]:
        ra, rb = cell(*a), cell(*b)
        return None if ra is None or rb is None else rm.difference(ra, rb)

    out = []
    if name == "quantease":
        for bits in ("4-bit", "3-bit"):
            for row in ("QuantEase (paper schedule)", "QuantEase (ours: from GPTQ)"):
                out.append(
                    _claim(
                        f"QuantEase beats GPTQ (up to 15 % lower perplexity), {bits} {group_label}, {row}",
                        diff((row, bits), ("GPTQ", bits)),
                    )
                )
        for col in ("3-bit + 1 % structured outliers", "3-bit + 1 % unstructured outliers"):
            q = ("QuantEase (paper schedule)", col)
            out.append(_claim(f"outliers help: {col} beats 3-bit GPTQ", diff(q, ("GPTQ", "3-bit"))))
            out.append(
                _claim(
                    f"near 4-bit quality: {col} vs 4-bit GPTQ (not worse)",
                    diff(q, ("GPTQ", "4-bit")),
                    comparable=True,
                )
            )
    elif name == "easyquant":
        out.append(
            _claim(
                f"EasyQuant (data-free) beats RTN, 4-bit {group_label}", diff(("EasyQuant", "4-bit"), ("RTN", "4-bit"))
            )
        )
        out.append(
            _claim(
                f"EasyQuant comparable to or better than GPTQ, 4-bit {group_label} (not worse)",
                diff(("EasyQuant", "4-bit"), ("GPTQ", "4-bit")),
                comparable=True,
            )
        )
        eq = cell("EasyQuant", "4-bit")
        if eq is not None and eq.get("outlier_fraction") is not None:
            share = eq["outlier_fraction"]
            out.append(
                f"outliers below 1 % of the weights: {100 * share:.2f} % -> {'held' if share < 0.01 else 'NOT held'}"
            )
    elif name == "leanquant":
        for bits in ("4-bit", "3-bit", "2-bit"):
            for row in ("LeanQuant non-uniform", "LeanQuant affine"):
                out.append(_claim(f"{row} beats GPTQ, {bits} {group_label}", diff((row, bits), ("GPTQ", bits))))
    return out


# ------------------------------------------------------------------------------------------------ tables


def _lookup(table: Table, rows_by_label: Dict[str, Dict[str, Any]], group: int):
    methods = dict(table.rows)
    cells = set((r, c.title) for r, c in _cells(table))
    by_title = {c.title: c for c in table.columns}

    def cell(row: str, title: str) -> Optional[Dict[str, Any]]:
        if (row, title) not in cells:
            return None
        col = by_title[title]
        label = f"{methods[row]} {col.bits}-bit" + "".join(f" {k}={v}" for k, v in col.extra)
        r = rows_by_label.get(label)
        return r if r is not None and r.get("status") == "ok" else None

    return cell


def lm_table(table: Table, result: Dict[str, Any], group: int) -> str:
    rows = {r["method"]: r for r in result["rows"]}
    fp = rm.summarize(result["rows"][0])
    cell = _lookup(table, rows, group)
    head = "| method | full precision | " + " | ".join(c.title for c in table.columns) + " |"
    lines = [head, "|---" * (2 + len(table.columns)) + "|"]
    fp_cell = f"{fp['perplexity']:.2f} ± {fp['se']:.2f}"
    for k, (row, _) in enumerate(table.rows):
        cells = []
        for col in table.columns:
            r = cell(row, col.title)
            if r is None:
                cells.append("-")
                continue
            s = rm.summarize(r)
            cells.append(f"{s['perplexity']:.2f} ± {s['se']:.2f} ({r['bits_per_weight']:.2f} b/w)")
        lines.append(f"| {row} | {fp_cell if k == 0 else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def encoder_table(table: Table, result: Dict[str, Any], group: int) -> str:
    rows = {r["method"]: r for r in result["rows"]}
    cell = _lookup(table, rows, group)
    lines = ["| method (MiniLM pooled cosine) | " + " | ".join(c.title for c in table.columns) + " |"]
    lines.append("|---" * (1 + len(table.columns)) + "|")
    for row, _ in table.rows:
        cells = []
        for col in table.columns:
            r = cell(row, col.title)
            cells.append("-" if r is None else f"{rm.summarize(r)['pooled']:.4f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", type=rm._str_list, default=list(TABLES), help=f"subset of {','.join(TABLES)}")
    p.add_argument("--group", type=int, default=-1, help="group size (default -1: per channel, as the papers)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 calibration and 4 evaluation windows")
    p.add_argument("--window", type=int, default=rm.WINDOW)
    p.add_argument("--calib-windows", type=int, default=None, help="default 16; quick 4")
    p.add_argument("--seeds", type=rm._int_list, default=[0])
    p.add_argument("--eval-windows", type=int, default=None, help="default 32; quick 4")
    p.add_argument("--sentences", type=int, default=None, help="MiniLM test sentences (0 skips MiniLM)")
    p.add_argument("--calib-sentences", type=int, default=256)
    p.add_argument("--max-blocks", type=int, default=None)
    p.add_argument("--quantease-iters", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        p.error(f"unknown table(s) {unknown}; known: {', '.join(TABLES)}")
    args.calib_windows = args.calib_windows or (4 if args.quick else 16)
    args.eval_windows = args.eval_windows or (4 if args.quick else 32)
    if args.sentences is None:
        args.sentences = 64 if args.quick else None
    args.heldout_windows = 0  # the layer loss is the main job's business; here only perplexity
    return args


def main(argv: Optional[Sequence[str]] = None, log=print) -> Dict[str, Any]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    tables = [TABLES[t] for t in args.tables]
    todo = configs(tables, args.group)
    group_label = "per channel" if args.group == -1 else f"group {args.group}"
    log(f"paper tables {', '.join(args.tables)}: {len(todo)} quantizations of each model, {group_label}")
    out: Dict[str, Any] = {"args": vars(args), "lm": rm.run_causal_lm(args, todo, log)}
    if args.sentences != 0:
        out["encoder"] = rm.run_encoder(args, todo, log)
    out["claims"] = {}
    log("")
    log(f"SmolLM2-135M: {out['lm']['info']['calibration']}; {out['lm']['info']['evaluation']}.")
    for table in tables:
        log("")
        log(f"{table.title} -- SmolLM2-135M (perplexity ± s.e.; bits per weight)")
        log(lm_table(table, out["lm"], args.group))
        rows = {r["method"]: r for r in out["lm"]["rows"]}
        out["claims"][table.name] = claims(table.name, _lookup(table, rows, args.group), group_label)
        for line in out["claims"][table.name]:
            log(f"  {line}")
        if "encoder" in out:
            log("")
            log(encoder_table(table, out["encoder"], args.group))
    out["total_seconds"] = time.perf_counter() - t0
    log(f"\ntotal {out['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
