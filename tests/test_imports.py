"""The package's import structure: every module imports on its own in a fresh interpreter, the module-level
imports between quantease's modules form no circle, and no module imports another module's private name."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

import quantease

PACKAGE_DIR = Path(quantease.__file__).resolve().parent
PACKAGE_ROOT = PACKAGE_DIR.parent
# Modules that need an optional extra (torch) to import.
NEEDS_TORCH = {
    "quantease.torch",
    "quantease.hooks",
    "quantease.pipeline",
    "quantease.blocks",
    "quantease.distributed",
    "quantease.device_hessian",
    "quantease.offload",
}


def _modules() -> Dict[str, Path]:
    """Every module of the package (the compiled _core included) and its file."""
    out = {"quantease": PACKAGE_DIR / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="quantease."):
        spec = info.module_finder.find_spec(info.name.rsplit(".", 1)[-1])  # type: ignore[call-arg]
        if spec is not None and spec.origin:
            out[info.name] = Path(spec.origin)
    return out


def _python_modules() -> Dict[str, Path]:
    return {name: path for name, path in _modules().items() if path.suffix == ".py"}


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def _module_level_imports(name: str, path: Path, modules: Dict[str, Path]) -> List[tuple]:
    """(imported module, imported names) of every import outside functions (those run at import time)."""
    tree = ast.parse(path.read_text())
    package = _package_of(name, path)
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # read by type checkers only
            if isinstance(child, ast.Import):
                found.extend((alias.name, []) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                names = [alias.name for alias in child.names]
                # `from . import sub`: an import of the submodule
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                found.extend((s, []) for s in subs)
                rest = [n for n in names if f"{target}.{n}" not in modules]
                if rest or not subs:
                    found.append((target, rest))
            visit(child)

    visit(tree)
    return [(target, names) for target, names in found if target == "quantease" or target.startswith("quantease.")]


def test_no_import_circle():
    modules = _modules()
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in _python_modules().items():
        graph[name] = {t for t, _ in _module_level_imports(name, path, modules) if t in modules and t != name}
    # A submodule importing its own package (quantease) is no circle unless the package imports it back;
    # the depth-first search below finds any path back to where it started.
    state: Dict[str, int] = {}
    stack: List[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name)
    assert {"quantease.torch", "quantease.pipeline", "quantease.hooks", "quantease.solvers"} <= set(graph)


def test_no_private_names_imported_across_modules():
    modules = _modules()
    bad = []
    for name, path in _python_modules().items():
        tree = ast.parse(path.read_text())
        package = _package_of(name, path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("quantease")):
                if node.level:
                    base = package.split(".")
                    target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and f"{target}.{alias.name}" not in modules:  # a private module is fine
                        bad.append(f"{name} imports {target}.{alias.name}")
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(_python_modules()))
def test_each_module_imports_alone(module):
    if module in NEEDS_TORCH:
        pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
