#!/usr/bin/env bash
# Create .venv with bayeslib and everything its pipeline and tests use. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU wheel first: an open torch requirement would otherwise pull a multi-GB CUDA build.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev,workflow]"
