"""The notebooks: stored without outputs and in sync with notebooks/make_notebooks.py (fast), and executed
end to end with nbclient on the real SmolLM2-135M (marked real_model: runs when the cache holds the model
and texts, or with QUANTEASE_REAL=1).

The kernel is the "python3" kernel of the interpreter running the tests (jupyter_client starts
``sys.executable -m ipykernel_launcher`` for it), so it works in a fresh virtual environment with the
notebooks extra installed; the kernel's PYTHONPATH gets the directory this quantease was imported from.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

import quantease
from real_data import real_data_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart.ipynb", "end_to_end.ipynb")

nbformat = pytest.importorskip("nbformat")


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", os.path.join(NB_DIR, "make_notebooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("filename", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(filename):
    nb = nbformat.read(os.path.join(NB_DIR, filename), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None
    assert nb.metadata.kernelspec.name == "python3"


def test_notebooks_match_their_generator(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().out


def _real_available() -> bool:
    return real_data_available(("smollm2-135m",), ("wiki",))


real = pytest.mark.skipif(
    not _real_available(), reason="real models/texts not in the cache (set QUANTEASE_REAL=1 to fetch them)"
)


def _execute(filename, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("ipykernel")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(NB_DIR, filename), as_version=4)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(quantease.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=env)  # raises CellExecutionError naming the cell on any error
    outputs = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            assert out.output_type != "error", out
            outputs.append(out)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return nb, outputs, text


def _table(text: str) -> dict:
    """The quickstart's printed table: {(method, bits): relative loss} (columns: method, bits, rel. loss,
    bits/weight, seconds)."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[1].isdigit():
            try:
                rows[parts[0], int(parts[1])] = float(parts[2])
            except ValueError:
                pass
    return rows


@pytest.mark.real_model
@pytest.mark.slow
@real
def test_quickstart_notebook_runs(tmp_path):
    nb, outputs, text = _execute("quickstart.ipynb", tmp_path)
    rows = _table(text)
    have = ["rtn", "gptq", "quantease", "quantease-paper", "easyquant", "leanquant"]  # the main job's methods
    assert sorted(rows) == sorted((m, b) for m in have for b in (2, 3, 4)), text
    for (m, b), rel in rows.items():
        assert 0 < rel < 1, (m, b, rel)
        if b > 2:
            assert rel < rows[m, b - 1], (m, b)  # more bits, lower loss
    for b in (2, 3, 4):
        assert rows["gptq", b] < 0.75 * rows["rtn", b], text  # the Hessian pays off on a real layer
        assert rows["quantease", b] <= rows["gptq", b], text  # QuantEase from GPTQ is never worse on its H
    assert "H (1536, 1536) from 8192 tokens" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot"


@pytest.mark.real_model
@pytest.mark.slow
@real
def test_end_to_end_notebook_runs(tmp_path):
    nb, outputs, text = _execute("end_to_end.ipynb", tmp_path)
    assert "210 layers, relative layer loss mean " in text and "forward " in text
    assert "reloaded weights identical: True" in text
    assert "missing: [] unexpected: []" in text
    fp = float(text.split("full precision: perplexity ")[1].split()[0])
    q = float(text.split("-> GPTQ 3-bit g64 ")[1].split()[0])
    held_out = float(text.split("held-out layer loss ")[1].split()[0])
    assert 0 < held_out < 0.2
    reloaded = float(text.split("reloaded weights identical: True; perplexity ")[1].split()[0])
    assert 5 < fp < q < 10 * fp and reloaded == q
    assert "GPTQ checkpoint: 210 layers" in text
