"""The README's API table names every parameter of every solver with its real default (a new user read a table
that had drifted from the code)."""

from __future__ import annotations

import inspect
import os
import re

import pytest

import quantease

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.mark.parametrize("solver", ["rtn", "gptq", "quantease", "easyquant", "leanquant"])
def test_api_table_matches_the_signature(solver):
    text = open(README, encoding="utf-8").read()
    row = re.search(rf"^\| `{solver}\((.*?)\)` \|", text, flags=re.M)
    assert row, f"no API table row for {solver}"
    documented = {}
    for part in row.group(1).split(", "):
        if "=" in part:
            name, default = part.split("=", 1)
            documented[name.strip()] = default.strip()
    params = inspect.signature(getattr(quantease, solver)).parameters.values()
    for p in params:
        if p.kind is p.KEYWORD_ONLY:
            assert p.name in documented, f"{solver}: {p.name} missing from the README's API table"
            assert eval(documented[p.name]) == p.default, f"{solver}: {p.name}={documented[p.name]} vs {p.default!r}"
    assert set(documented) == {p.name for p in params if p.kind is p.KEYWORD_ONLY}
