#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script: the CUDA tests (captured graphs give the
# eager draws, CUDA agrees with the CPU, float32, stacks, failing linear algebra, draws off
# the device in chunks, compiled kernels in graphs), then the GPU benchmark (`python -m
# benchmarks --device cuda`). Needs torch with CUDA (and Triton), NumPyro, ArviZ and pytest in
# the running Python.
# Usage: bash scripts/cuda_checks.sh [OUT_DIR] [all|compiled] (default results/cuda, all)
#   all: every CUDA test, then the whole GPU study (about 10 minutes and the compilations)
#   compiled: the compiled kernels' CUDA tests, then the GPU study of compiled and uncompiled
#     HMC and NUTS against NumPyro; each part under a time limit (2.5 + 6.7 minutes), so that
#     what ran comes back within one 10-minute call (gpu.csv is written row by row)
set -uo pipefail
out=${1:-results/cuda}
mode=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, jax, numpyro; print('torch', torch.__version__, torch.cuda.get_device_name(), '| jax', jax.__version__, '| numpyro', numpyro.__version__)" | tee -a "$out/gpu.txt"
# compile=True needs a C++ compiler (AOTInductor's wrapper) and Triton (its kernels)
python3 -c "import importlib.util, shutil, os; print('C++ compiler:', shutil.which(os.environ.get('CXX', 'g++')), '| triton:', importlib.util.find_spec('triton') is not None)" | tee -a "$out/gpu.txt"
if [ "$mode" = compiled ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k compiled 2>&1 | tee "$out/tests.log"
    only=bayeslib-hmc-compiled,bayeslib-nuts-compiled,bayeslib-hmc,bayeslib-nuts,numpyro-vectorized
    timeout 400 python3 -m benchmarks --device cuda --only "$only" --out "$out" 2>&1 | tee "$out/benchmark.log"
else
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_torch_compat.py 2>&1 | tee "$out/tests.log"
    python3 -m benchmarks --device cuda --out "$out" 2>&1 | tee "$out/benchmark.log"
fi
