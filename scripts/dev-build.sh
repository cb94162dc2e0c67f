#!/usr/bin/env bash
# Development build: compiles python/quantease/_core*.so in place, so that PYTHONPATH=python works
# without reinstalling. Uses the Python given by $PYTHON (default: python3) for pybind11 and Eigen.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# an absolute path: CMake runs it from the build folder (a relative .venv/bin/python found no Eigen there)
PYTHON=$(cd "$(dirname "$(command -v "$PYTHON")")" && pwd)/$(basename "$PYTHON")
# The build requirements of pyproject.toml, for a venv made by scripts/setup.sh (pip built the wheel in an
# isolated environment, so they are not installed there).
"$PYTHON" -c "import pybind11, cmeel, scipy_openblas32" 2>/dev/null ||
  "$PYTHON" -m pip install -q "pybind11>=2.12" cmeel-eigen ninja "scipy-openblas32>=0.3.27"
pybind11_dir=$("$PYTHON" -c 'import pybind11; print(pybind11.get_cmake_dir())')
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DSKBUILD_PROJECT_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" \
  -DPython_EXECUTABLE="$PYTHON" -Dpybind11_DIR="$pybind11_dir" \
  -DQUANTEASE_OPENBLAS="${QUANTEASE_OPENBLAS:-ON}" >/dev/null
cmake --build build/dev -j "${JOBS:-2}"
