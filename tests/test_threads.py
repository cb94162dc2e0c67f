"""Threads: bit-identical results of every solver, the accumulator and the packers for any OMP_NUM_THREADS
and OPENBLAS_NUM_THREADS, and the GIL released during solves.

All run in fresh subprocesses, because OMP_NUM_THREADS is read once when the OpenMP runtime starts. They
compare arrays, never times, and never skip: a loaded machine changes nothing they check.
"""

from __future__ import annotations

import json

import pytest

from subprocess_run import assert_python_keeps_running, run_python

# One subprocess per configuration, each printing the digests of every case in solver_cases.py.
DIGESTS = """
    import json, solver_cases
    print(json.dumps(solver_cases.all_digests()))
"""


@pytest.fixture(scope="module")
def one_thread() -> dict:
    return json.loads(run_python(DIGESTS, threads=1, env={"OPENBLAS_NUM_THREADS": "1"}))


def _differing(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return sorted(k for k in a if a[k] != b[k])


# OpenBLAS reads OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS (None: unset, so it follows OMP_NUM_THREADS).
@pytest.mark.parametrize("omp, openblas", [(2, None), (3, None), (8, None), (1, 4), (3, 8)])
def test_every_solver_identical_for_any_thread_count(one_thread, omp, openblas):
    out = json.loads(run_python(DIGESTS, threads=omp, env={"OPENBLAS_NUM_THREADS": openblas}))
    assert _differing(one_thread, out) == []


# What threadpoolctl (used by scikit-learn) does: set every BLAS pool of the process, ours included, and
# restore its own earlier value afterwards -- 4 here, between and during calls.
POOL_CHANGED = """
    import ctypes, json, quantease, solver_cases
    import scipy_openblas32 as wheel
    blas = ctypes.CDLL(wheel.get_lib_dir() + "/lib" + wheel.get_library() + ".so")
    uses_it = quantease._core.gemm_backend.startswith("OpenBLAS")
    problem = solver_cases.make_problems()["dead"]
    out, pools = {}, {}
    for name in solver_cases.CASES:
        blas.scipy_openblas_set_num_threads(4)
        out["dead/" + name] = solver_cases.digest(solver_cases.run(name, problem))
        pools[name] = blas.scipy_openblas_get_num_threads()
    print(json.dumps(dict(out=out, pools=pools, uses_it=uses_it)))
"""


def test_blas_threads_set_by_others_change_nothing(one_thread):
    got = json.loads(run_python(POOL_CHANGED, threads=1))
    assert _differing({k: one_thread[k] for k in got["out"]}, got["out"]) == []
    if got["uses_it"]:
        # every solver on H put OpenBLAS back to one thread: its threaded dpotrf and sgemm sum in another order
        assert {k: v for k, v in got["pools"].items() if k.startswith(("gptq", "quantease", "leanquant"))} == {
            k: 1 for k in got["pools"] if k.startswith(("gptq", "quantease", "leanquant"))
        }


def test_easyquant_and_the_accumulator_release_the_gil():
    assert_python_keeps_running(
        "p = problems.random_problem(512, 1024, n=2048, seed=3)",
        "quantease.easyquant(p.W, bits=3, group_size=128, steps=60)",
    )
    assert_python_keeps_running(
        "import numpy as np; acc = quantease.HessianAccumulator(1024); "
        "X = np.random.default_rng(0).standard_normal((6000, 1024))",
        "acc.add(X)",
    )


def test_python_keeps_running_during_a_solve():
    assert_python_keeps_running("p = problems.random_problem(768, 768, n=1536, seed=3)", "quantease.gptq(p.W, p.H)")
