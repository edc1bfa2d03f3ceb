#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script: the CUDA tests (captured graphs give the
# eager draws, CUDA agrees with the CPU, float32, stacks, failing linear algebra, draws off
# the device in chunks), then the GPU benchmark (`python -m benchmarks --device cuda`, about
# 5 minutes). Needs torch with CUDA, NumPyro, ArviZ and pytest in the running Python.
# Usage: bash scripts/cuda_checks.sh [OUT_DIR] (default results/cuda)
set -uo pipefail
out=${1:-results/cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, jax, numpyro; print('torch', torch.__version__, torch.cuda.get_device_name(), '| jax', jax.__version__, '| numpyro', numpyro.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_torch_compat.py 2>&1 | tee "$out/tests.log"
python3 -m benchmarks --device cuda --out "$out" 2>&1 | tee "$out/benchmark.log"
