#!/usr/bin/env bash
# One device run: GPU tests, then bench/gpu.py. Wheels for what the GPU image
# lacks (dask, distributed, zarr, dask-cuda, ...) travel in .whl (see bench/README.md).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, dask, distributed, zarr, dask_cuda; print('torch', torch.__version__, 'dask', dask.__version__, 'dask_cuda', dask_cuda.__version__)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -s -o addopts="" 2>&1 | tail -15
cd bench && timeout "${BENCH_TIMEOUT:-360}" python3 gpu.py --size "${SIZE:-8192}" \
    --model-seconds "${MODEL_SECONDS:-30}" ${COMPILE:+--compile} --layouts ${LAYOUTS-1x4 4x2} --block-sizes ${BLOCKS-4096} 2>&1 | grep -v -E "^(INFO|WARNING|DEBUG)"
