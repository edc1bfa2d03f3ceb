#!/usr/bin/env bash
# Create .venv with bayeslib and everything its pipeline and tests use. Safe to re-run.
# --system-packages: also the Debian packages the slow tests start for real (a browser, a
# one-node SLURM; scripts/system_packages.sh), which the full test suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --system-packages ]]; then
    bash scripts/system_packages.sh
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU wheel first: an open torch requirement would otherwise pull a multi-GB CUDA build.
# 2.13.0 is the release CI tests, and pyproject.toml allows only 2.13.x: the tracer uses
# private torch names (bayeslib/torch_compat.py, checked by tests/test_torch_compat.py).
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev,workflow]"
