#!/usr/bin/env bash
# The consumers' environment: GPTQModel and transformers + optimum installed as a user does on a CPU machine,
# apart from the project's venv (gptqmodel 6.0.3 pins its own numpy and needs an older transformers).
# Every package is pinned by scripts/consumer-constraints.txt. Idempotent: an environment built from the same
# constraints is reused as it is (a few ms); a changed constraints file rebuilds it.
#   bash scripts/consumer-venv.sh        # builds if needed, then prints the environment's python
# CONSUMER_VENV names the environment (default: $QUANTEASE_CACHE/venv-consumers, else .cache/venv-consumers).
set -euo pipefail
cd "$(dirname "$0")/.."
CONSTRAINTS="$PWD/scripts/consumer-constraints.txt"
# Absolute: the printed python is run by tests from their own working directories.
VENV=$(realpath -m "${CONSUMER_VENV:-${QUANTEASE_CACHE:-.cache}/venv-consumers}")
STAMP="$VENV/.quantease-constraints"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && cmp -s "$STAMP" "$CONSTRAINTS"; then
  echo "$VENV/bin/python"
  exit 0
fi
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q -c "$CONSTRAINTS" "$@" >&2; }
# CPU torch first: whatever asks for torch later finds it installed instead of fetching a CUDA build.
pip_install torch
# gptqmodel from its sdist without CUDA kernels, built against the torch above (its setup.py imports pcre).
pip_install setuptools wheel pypcre
BUILD_CUDA_EXT=0 GPTQMODEL_FORCE_BUILD=1 pip_install --no-build-isolation --no-binary gptqmodel gptqmodel
pip_install transformers kernels requests optimum
"$PY" -m pip check >&2
cp "$CONSTRAINTS" "$STAMP"
echo "consumer environment built in ${SECONDS} s: $VENV" >&2
echo "$PY"
