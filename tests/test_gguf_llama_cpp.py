"""quantease's rewrite of llama.cpp's block quantizers against llama.cpp's own C code, byte for byte.

llama-quantize quantizes a tensor with ggml's ``quantize_<type>(src, dst, nrows, n_per_row, imatrix)``
(ggml-quants.c, in the ggml-base library, built without -march flags). This test compiles that very file
from the llama.cpp sources pinned by scripts/build_llama_cpp.sh (the llama-cpp-python sdist from PyPI, kept
in the cache) into a small shared library, the same way, and compares its bytes with
``quantease.gguf.pack(quantease.rtn(W, gguf=T, imatrix=...))`` for every type, with and without an imatrix.

The tests marked llama_cpp (QUANTEASE_LLAMA_CPP=1) go through llama-quantize itself: a layer written as an F32
GGUF with llama-imatrix's file, quantized, read back; bench/bench_gguf_layers.py's anchor is that file.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import quantease
from problems import llm_like
from quantease import gguf as qg

ROOT = pathlib.Path(__file__).parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_cpp.sh"

# What ggml-quants.c needs from the rest of ggml-base for these calls (row sizes, the assert's abort).
STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "%s:%d\n", file, line); abort(); }
size_t ggml_type_size(enum ggml_type t) {
  switch (t) {
    case GGML_TYPE_Q4_0: case GGML_TYPE_IQ4_NL: return 18; case GGML_TYPE_Q4_1: return 20;
    case GGML_TYPE_Q5_0: return 22; case GGML_TYPE_Q5_1: return 24; case GGML_TYPE_Q8_0: return 34;
    case GGML_TYPE_Q2_K: return 84; case GGML_TYPE_Q3_K: return 110; case GGML_TYPE_Q4_K: return 144;
    case GGML_TYPE_Q5_K: return 176; case GGML_TYPE_Q6_K: return 210; default: abort();
  }
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) {
  return ggml_type_size(t) * ne / (t >= GGML_TYPE_Q2_K && t <= GGML_TYPE_Q6_K ? 256 : 32);
}
const char * ggml_type_name(enum ggml_type t) { return "?"; }
"""


def _pin():
    if not BUILD_SCRIPT.exists():
        pytest.skip("scripts/build_llama_cpp.sh (the pinned llama.cpp sources) is not in this checkout")
    text = BUILD_SCRIPT.read_text()
    version = re.search(r"^VERSION=(\S+)", text, re.M).group(1)
    sha256 = re.search(r"^SHA256=(\S+)", text, re.M).group(1)
    return version, sha256


def _sdist(version: str, sha256: str) -> pathlib.Path:
    """The pinned sdist: from the build script's cache folder, else downloaded from PyPI into the cache."""
    from quantease.models import resolve_cache_dir

    cache = resolve_cache_dir() / "llama.cpp"
    name = f"llama_cpp_python-{version}.tar.gz"
    for path in sorted(glob.glob(str(cache / f"{version}*" / name))):
        if hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest() == sha256:
            return pathlib.Path(path)
    folder = cache / f"{version}-sdist"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={version}",
                "-d",
                str(folder),
            ],
            check=True,
        )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, f"sha256 mismatch for {path}"
    return path


@pytest.fixture(scope="module")
def ggml_quants(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    version, sha256 = _pin()
    src = tmp_path_factory.mktemp("ggml")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/ggml/"
    with tarfile.open(_sdist(version, sha256)) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
            if (
                rel.startswith("include/")
                or (rel.startswith("src/") and rel.count("/") == 1)
                or (rel.startswith("src/ggml-cpu/") and rel.count("/") == 2)
            ):
                m.name = rel
                members.append(m)
        tar.extractall(src, members=members, filter="data")
    (src / "stubs.c").write_text(STUBS)
    lib = src / "libggml_quants.so"
    subprocess.run(
        [
            compiler,
            "-std=gnu11",
            "-O3",
            "-DNDEBUG",
            "-shared",
            "-fPIC",
            f"-I{src / 'include'}",
            f"-I{src / 'src'}",
            f"-I{src / 'src' / 'ggml-cpu'}",
            str(src / "src" / "ggml-quants.c"),
            str(src / "stubs.c"),
            "-o",
            str(lib),
            "-lm",
        ],
        check=True,
    )
    return ctypes.CDLL(str(lib))


def llama_cpp_bytes(lib, name: str, W: np.ndarray, imatrix) -> np.ndarray:
    symbol = name[:-1].lower() + "K" if name.endswith("_K") else name.lower()  # quantize_q4_0, quantize_q4_K
    fn = getattr(lib, f"quantize_{symbol}")
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rows, cols = W.shape
    W = np.ascontiguousarray(W, dtype=np.float32)
    out = np.zeros((rows, cols // qg.TYPES[name].block_size * qg.TYPES[name].type_size), np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    n = fn(W.ctypes.data, out.ctypes.data, rows, cols, None if im is None else im.ctypes.data)
    assert n == out.size
    return out


def weights():
    rng = np.random.default_rng(11)
    p = llm_like(rows=24, cols=512, seed=12)
    W = rng.standard_t(4, size=(8, 512)).astype(np.float32) * 0.03
    W[0, :64] = 0.0
    W[1] = np.abs(W[1])
    return [(p.W, np.diag(p.H)), (W, rng.random(512).astype(np.float32) ** 3)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(qg.TYPES))
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_rtn_is_llama_quantize_byte_for_byte(ggml_quants, name, with_imatrix):
    for W, imatrix in weights():
        imatrix = imatrix if with_imatrix else None
        ours = qg.pack(quantease.rtn(W, gguf=name, imatrix=imatrix))
        assert np.array_equal(ours, llama_cpp_bytes(ggml_quants, name, W, imatrix))


_spec = importlib.util.spec_from_file_location("llama_cpp", ROOT / "bench" / "llama_cpp.py")
llama_cpp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_cpp)


@pytest.fixture(scope="module")
def tools():
    return llama_cpp.tools_dir()


def dequantize_file(raw: np.ndarray, name: str) -> np.ndarray:
    gguf = pytest.importorskip("gguf")
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name])


@pytest.mark.llama_cpp
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("QUANTEASE_LLAMA_CPP") != "1", reason="needs QUANTEASE_LLAMA_CPP=1 (llama.cpp's tools)"
)
@pytest.mark.parametrize("name", ["Q4_K", "Q3_K"])
def test_rtn_is_llama_quantize_file_with_imatrix(tools, tmp_path, name):
    """llama-quantize's file of a layer, with llama-imatrix's mean of x^2 per column as its importance, has
    the bytes and so the layer loss of ``rtn(W, gguf=T, imatrix=np.diag(H))`` (H = (2/n) XᵀX: diag(H) is
    twice that mean, and llama.cpp's searches use only the importance's ratios); without one, of
    ``rtn(W, gguf=T)``. The imatrix lowers llama.cpp's loss here (the anchor of bench_gguf_layers.py)."""
    p = llm_like(rows=24, cols=512, seed=5)
    losses = {}
    for label, file_importance, ours_importance in (
        ("imatrix", np.diag(p.H) / 2, np.diag(p.H)),
        ("plain", None, None),
    ):
        raw = llama_cpp.quantize_matrix(p.W, name, tmp_path, imatrix=file_importance, bin_dir=tools, threads=1)
        ours = quantease.rtn(p.W, gguf=name, imatrix=ours_importance)
        assert np.array_equal(qg.pack(ours), raw), label
        W_file = dequantize_file(raw, name)
        losses[label] = quantease.layer_loss(p.W, W_file, p.H)
        assert losses[label] == quantease.layer_loss(p.W, ours.weight, p.H)
    # llama-imatrix's own figure, the mean of x^2 over the calibration tokens (float32 rounding aside).
    collected = (p.X.astype(np.float64) ** 2).mean(axis=0)
    raw = llama_cpp.quantize_matrix(p.W, name, tmp_path, imatrix=collected, bin_dir=tools, threads=1)
    assert quantease.layer_loss(p.W, dequantize_file(raw, name), p.H) == pytest.approx(losses["imatrix"], rel=1e-3)
    assert losses["imatrix"] < losses["plain"]


@pytest.mark.llama_cpp
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("QUANTEASE_LLAMA_CPP") != "1", reason="needs QUANTEASE_LLAMA_CPP=1 (llama.cpp's tools)"
)
def test_bench_gguf_layers_divides_by_llama_cpp_files(tools):
    """bench_gguf_layers.py's anchor: llama-quantize's files (imatrix and plain), each solver's loss over the
    lower of the two."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gguf_layers

    p = llm_like(rows=16, cols=512, seed=7)
    (q4, q3) = bench_gguf_layers.run([("tiny", p.W, p.H)], tools, threads=1, log=lambda *_: None)
    for rec, name in ((q4, "Q4_K"), (q3, "Q3_K")):
        assert rec["type"] == name and rec["rewrite_equals_file"]
        anchor = quantease.rtn(p.W, gguf=name, imatrix=np.diag(p.H))
        assert rec["llama_imatrix_loss"] == quantease.layer_loss(p.W, anchor.weight, p.H)
        assert rec["llama_plain_loss"] == quantease.layer_loss(p.W, quantease.rtn(p.W, gguf=name).weight, p.H)
        best = min(rec["llama_imatrix_loss"], rec["llama_plain_loss"])
        for label, ratio in rec["ratio"].items():
            assert ratio == rec["loss"][label] / best
    assert "| tiny | Q3_K |" in bench_gguf_layers.table([q4, q3])
