"""Running library code in a fresh interpreter: the thread-count and GIL checks of every solver.

A subprocess is needed because OMP_NUM_THREADS is read once, when the OpenMP runtime starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Dict, Optional

import quantease

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(quantease.__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_python(code: str, threads: int, timeout: float = 240, env: Optional[Dict[str, Optional[str]]] = None) -> str:
    """Runs ``code`` with OMP_NUM_THREADS=threads; returns the last line it printed.

    env: more variables to set (a value of None removes the variable)."""
    env, extra = dict(os.environ), env or {}
    env["OMP_NUM_THREADS"] = str(threads)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_DIR, TESTS_DIR] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


_HEARTBEAT = """
import json, threading, time
import quantease, problems

{setup}
run = lambda: {call}
run()                                          # warm-up
out = []
for _ in range(3):
    t = time.perf_counter(); run(); call = time.perf_counter() - t
    worker = threading.Thread(target=run)
    gaps, last = [], time.perf_counter()
    worker.start()
    while worker.is_alive():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    out.append(dict(call=call, max_gap=max(gaps), beats=len(gaps)))
    if max(gaps) < 0.4 * call:
        break
print(json.dumps(out))
"""


def assert_python_keeps_running(setup: str, call: str) -> None:
    """While one thread runs ``call`` (after ``setup``), the main thread keeps executing Python.

    Load-independent check that the GIL is released: were it held, the main loop would stall for the whole
    call, so its longest gap would be about the call's duration.
    """
    attempts = json.loads(run_python(_HEARTBEAT.format(setup=setup, call=call), threads=1))
    assert any(a["max_gap"] < 0.4 * a["call"] for a in attempts), attempts
