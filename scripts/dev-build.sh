#!/usr/bin/env bash
# Development build: compiles python/quantease/_core*.so in place, so that PYTHONPATH=python works
# without reinstalling. Uses the Python given by $PYTHON (default: python3) for pybind11 and Eigen.
#
# Other configurations (CI's build matrix): BUILD=<name> builds in build/<name> into a copy of the package,
# build/<name>/python/quantease (run with PYTHONPATH=build/<name>/python), with the CMake options taken from
# QUANTEASE_NATIVE, QUANTEASE_OPENBLAS and QUANTEASE_SANITIZE (ON/OFF), e.g.
#   BUILD=eigen QUANTEASE_OPENBLAS=OFF bash scripts/dev-build.sh
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
BUILD=${BUILD:-dev}
out=$PWD/python/quantease
if [ "$BUILD" != dev ]; then
  # the package's Python files, refreshed on every build; the module of this configuration joins them
  out=$PWD/build/$BUILD/python/quantease
  rm -rf "$out.tmp" && mkdir -p "$(dirname "$out")" && cp -r python/quantease "$out.tmp"
  find "$out.tmp" \( -name '_core*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
  [ -d "$out" ] && find "$out" -maxdepth 1 -name '_core*.so' -exec mv {} "$out.tmp"/ \;
  rm -rf "$out" && mv "$out.tmp" "$out"
fi
cmake -S . -B "build/$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSKBUILD_PROJECT_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" \
  -DPython_EXECUTABLE="$PYTHON" -Dpybind11_DIR="$pybind11_dir" -DQUANTEASE_OUTPUT_DIR="$out" \
  -DQUANTEASE_NATIVE="${QUANTEASE_NATIVE:-ON}" -DQUANTEASE_OPENBLAS="${QUANTEASE_OPENBLAS:-ON}" \
  -DQUANTEASE_SANITIZE="${QUANTEASE_SANITIZE:-OFF}" >/dev/null
cmake --build "build/$BUILD" -j "${JOBS:-2}"
