"""The solvers quantease offers, in one registry: the pipeline, the benchmarks and the notebooks read it.

Each entry says what the solver is called, which function runs it, whether it needs the layer's Hessian,
which keyword options it takes (the function's own signature: its docstring holds the rules of each option,
checked in one place per option by quantease._validate and the bindings) and the options the entry fixes
(``defaults``: the caller's own options win). ``Solver.run`` calls any solver the same way, ``W`` and ``H``
first; a solver without H gets none (EasyQuant only reports ``loss`` from it).

Two entries run QuantEase: ``"quantease"`` is our best configuration (chosen from the real-layer and
real-model data in bench/README.md: coordinate descent from GPTQ's result, never worse than GPTQ on the
layer objective), ``"quantease-paper"`` the paper's schedule (30 sweeps from W, every third one relaxed), the
NumPy function's own defaults.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from . import _core
from ._easyquant import easyquant
from ._gptq import gptq
from ._leanquant import leanquant
from ._quantease import quantease
from ._rtn import rtn
from .result import QuantResult

__all__ = ["Solver", "SOLVERS", "NAMES", "BITS", "QUANTEASE_BEST", "get_solver"]

#: The bit widths every solver takes (defined once, by the C++ core's bindings).
BITS = range(_core.MIN_BITS, _core.MAX_BITS + 1)


@dataclass(frozen=True)
class Solver:
    """One solver: ``function(W[, H], **options) -> QuantResult``."""

    name: str
    function: Callable[..., QuantResult]
    needs_hessian: bool
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)  # options this entry fixes; the caller's win

    @property
    def options(self) -> Tuple[str, ...]:
        """The keyword options of ``function`` (after W and H), in signature order."""
        params = inspect.signature(self.function).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def run(self, W: Any, H: Optional[Any] = None, **options: Any) -> QuantResult:
        """Solve one layer with the entry's ``defaults`` under the caller's ``options``; H is required when
        ``needs_hessian`` and passed on (for the loss) otherwise."""
        options = {**self.defaults, **options}
        if self.needs_hessian:
            if H is None:
                raise ValueError(f"{self.name} needs the layer's Hessian H, got None")
            return self.function(W, H, **options)
        if H is not None and "H" in self.options:
            return self.function(W, H=H, **options)
        return self.function(W, **options)


#: The options of the "quantease" entry (see the module docstring and bench/README.md for the data).
QUANTEASE_BEST: Dict[str, Any] = {"init": "gptq"}

SOLVERS: Dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("rtn", rtn, False, "round to nearest on a min-max (or MSE-shrunk) grid: the floor"),
        Solver("gptq", gptq, True, "GPTQ column loop with the OBS error feedback"),
        Solver(
            "quantease",
            quantease,
            True,
            "our best QuantEase: coordinate descent on the layer objective from GPTQ's result",
            QUANTEASE_BEST,
        ),
        Solver("quantease-paper", quantease, True, "QuantEase with the paper's schedule: 30 sweeps from W"),
        Solver("easyquant", easyquant, False, "data-free: outliers in full precision, per-channel range optimised"),
        Solver("leanquant", leanquant, True, "GPTQ on a loss-error-aware grid (codebook or affine)"),
    )
}

#: Every solver's name, in the order tables list them.
NAMES: Tuple[str, ...] = tuple(SOLVERS)


def get_solver(name: str) -> Solver:
    """The registry entry of ``name``; ValueError naming the choices for anything else."""
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"method must be one of {', '.join(NAMES)}, got {name!r}")
    return SOLVERS[name]
