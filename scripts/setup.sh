#!/usr/bin/env bash
# Create .venv with bayeslib and everything its pipeline and tests use. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU wheel first: an open torch requirement would otherwise pull a multi-GB CUDA build.
# 2.13.0 is the release CI tests, and pyproject.toml allows only 2.13.x: the tracer uses
# private torch names (bayeslib/torch_compat.py, checked by tests/test_torch_compat.py).
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev,workflow]"
