"""Shared pytest set-up: the tests directory on sys.path (so `import problems` and `from reference import ...`
work from every test file), hypothesis profiles, and small fixtures."""

from __future__ import annotations

import os
import sys

# The NumPy oracles and problem generators run small matrix products, for which BLAS threads only cost:
# on a busy 2-core machine an OpenBLAS that follows OMP_NUM_THREADS=2 made them 100x slower. The C++ core's
# OpenMP threads are not affected (OPENBLAS_NUM_THREADS is read by OpenBLAS alone).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:  # numpy may have been imported (and OpenBLAS started) before this file: limit it at run time too
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")
except ImportError:
    pass

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

try:
    from hypothesis import HealthCheck, settings

    # Small example counts: the suite must stay fast on 2 cores. HYPOTHESIS_PROFILE=thorough for more.
    settings.register_profile("quantease", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    # The fuzzing run of CI (tests/test_fuzz.py, .ci/run): 2,000 examples per test from a fixed seed
    # (--hypothesis-seed), failures kept in the git-ignored .hypothesis-fuzz/ and replayed first next time.
    from hypothesis.database import DirectoryBasedExampleDatabase

    settings.register_profile(
        "fuzz",
        max_examples=2000,
        deadline=None,
        print_blob=True,
        database=DirectoryBasedExampleDatabase(os.path.join(os.path.dirname(TESTS_DIR), ".hypothesis-fuzz")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quantease"))
except ImportError:  # hypothesis is a test extra; the files that need it import it themselves
    pass


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
