"""The hand-written stub of the compiled module names exactly what the module exports."""

import ast
import pathlib

import quantease
from quantease import _core


def _stub_names():
    stub = pathlib.Path(quantease.__file__).with_name("_core.pyi")
    if not stub.exists():  # installed without the stub next to the package: check the source tree
        stub = pathlib.Path(__file__).parents[1] / "python" / "quantease" / "_core.pyi"
    tree = ast.parse(stub.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_stub_matches_module():
    exported = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    assert _stub_names() == exported


def test_version_flows_from_pyproject():
    text = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'version = "{quantease.__version__}"' in text
    assert _core.__version__ == quantease.__version__
