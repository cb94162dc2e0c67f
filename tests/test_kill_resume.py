"""A quantize_model run killed with SIGKILL anywhere -- inside a block, halfway through writing a block's
checkpoint, right after its rename, or at random moments -- resumes to the very weights of an uninterrupted
run (the sha256 of the whole state dict).

Each run is a fresh interpreter (tests/resume_child.py: a tiny 4-block Llama, GPTQ act-order g32) with one
thread for torch and OpenMP, so that the uninterrupted run is a fixed reference.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from subprocess_run import PACKAGE_DIR, TESTS_DIR  # noqa: E402

pytestmark = pytest.mark.slow

CHILD = os.path.join(TESTS_DIR, "resume_child.py")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_DIR, TESTS_DIR] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_child(directory, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, CHILD, str(directory), *map(str, args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def digest_of(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.split("digest ")[-1].strip()


def killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


def resumed_blocks(done: subprocess.CompletedProcess) -> int:
    return int(done.stdout.split("resumed ")[-1].split()[0])


def start_child(directory) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, CHILD, str(directory)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's digest, and how long it took from its first layer to its end."""
    proc = start_child(tmp_path_factory.mktemp("reference"))
    first = proc.stdout.readline()
    t0 = time.monotonic()
    out, err = proc.communicate()
    assert proc.returncode == 0 and first.startswith("layer"), err
    return out.split("digest ")[-1].strip(), time.monotonic() - t0


@pytest.mark.parametrize(
    "mode, arg, finished_before",
    [
        ("after_layer", 10, 1),  # block 1's third layer of seven: block 0 is on disk, block 1 is not
        ("during_write", 2, 2),  # block 2's file half written: blocks 0 and 1 resume, block 2 is redone
        ("after_rename", 0, 1),  # block 0's file renamed, its directory not yet synced
    ],
)
def test_killed_at_a_chosen_point_resumes_to_the_same_weights(tmp_path, reference, mode, arg, finished_before):
    digest, _ = reference
    killed(run_child(tmp_path, mode, arg))
    leftovers = [n for n in os.listdir(tmp_path) if ".tmp" in n]
    assert (len(leftovers) == 1) == (mode == "during_write"), leftovers
    done = run_child(tmp_path)
    assert resumed_blocks(done) == finished_before
    assert digest_of(done) == digest
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]  # the half-written file was removed


def test_killed_at_random_moments_resumes_to_the_same_weights(tmp_path, reference):
    # SIGKILL at a random moment of the run (after its first layer, within the reference run's span), three
    # times on the same directory; then the run is left to finish.
    digest, span = reference
    rng = random.Random(15)
    kills = 0
    for _ in range(20):
        if kills == 3:
            break
        proc = start_child(tmp_path)
        first = proc.stdout.readline()  # a layer is done: the run is past its start-up
        time.sleep(rng.uniform(0.0, 0.7 * span))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        out, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err
        if proc.returncode == 0:  # finished before the kill: resumed from the kills so far, it is the reference
            assert (first + out).split("digest ")[-1].strip() == digest
            for name in os.listdir(tmp_path):  # and the kills go on with a fresh run
                os.remove(os.path.join(tmp_path, name))
    assert kills == 3
    done = run_child(tmp_path)
    assert digest_of(done) == digest
