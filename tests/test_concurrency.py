"""Python threads calling the solvers at once get exactly what serial calls get.

The bindings release the GIL, so the calls really overlap: each runs its own OpenMP team on per-call buffers
and per-thread scratch (leanquant's thread_local k-means and affine-search buffers), and the only state they
share -- OpenBLAS, whose thread count every call puts back to one -- is not written with results. Were anything
shared written by two calls at once, some digest would differ (and the ASan build of CI would see it).
"""

from __future__ import annotations

import threading

import solver_cases

N_THREADS = 8


def _run_together(jobs_per_thread, problems):
    """Starts one thread per job list at the same moment; returns {(thread, job): digest}."""
    barrier = threading.Barrier(len(jobs_per_thread))
    out, errors = {}, []

    def worker(k, jobs):
        try:
            barrier.wait()
            for pname, name in jobs:
                out[k, (pname, name)] = solver_cases.digest(solver_cases.run(name, problems[pname]))
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k, jobs)) for k, jobs in enumerate(jobs_per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def test_eight_threads_calling_different_solvers_give_the_serial_results():
    problems = solver_cases.make_problems()
    jobs = [(pname, name) for pname in problems for name in solver_cases.CASES]
    serial = {job: solver_cases.digest(solver_cases.run(job[1], problems[job[0]])) for job in jobs}
    # thread k takes every 8th job from k: at any moment the eight run different solvers
    together = _run_together([jobs[k::N_THREADS] for k in range(N_THREADS)], problems)
    assert len(together) == len(jobs)
    assert [job for (_, job), d in together.items() if d != serial[job]] == []


def test_eight_threads_calling_the_same_solvers_give_the_serial_results():
    # the same call in every thread at once: what per-thread scratch and per-call buffers must keep apart
    problems = solver_cases.make_problems()
    jobs = [
        ("dead", name)
        for name in (
            "gptq_g64_act",
            "quantease_g64_outliers",
            "leanquant_g64",
            "leanquant_affine",
            "easyquant",
            "hessian_f64",
            "gguf_gptq_q4_k",
        )
    ]
    serial = {job: solver_cases.digest(solver_cases.run(job[1], problems[job[0]])) for job in jobs}
    together = _run_together([jobs] * N_THREADS, problems)
    assert len(together) == N_THREADS * len(jobs)
    assert [(k, job) for (k, job), d in together.items() if d != serial[job]] == []
