#!/usr/bin/env bash
# One short, prepared run for a lent GPU (the device tool): the image has torch + CUDA but no fla,
# mamba_ssm, deepspeed, megatron-core or webdataset, so their wheels travel in .whl/ (see the device
# README: pip download --python-version 3.12 ... -d .whl NAME==VERSION). Then: CUDA kernel paths against
# the CPU ones, and training-step tokens/s and MFU of GLA-340M and Mamba2-370m shapes at 4K context.
#   run: bash benchmarks/gpu.sh   (carry .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/gpu_bench.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_bench.log"
