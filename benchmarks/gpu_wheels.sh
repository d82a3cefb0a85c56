#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what the lent GPU machine's image lacks (Python 3.12, torch 2.11 + CUDA,
# triton, transformers, safetensors, einops, tensorboard, psutil, msgpack, ninja, py-cpuinfo; no network),
# for benchmarks/gpu.sh; the device tool carries .whl (at most 64 MiB). Run here, once:
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
pip=".venv/bin/python -m pip"
rm -rf .whl && mkdir -p .whl
# binary or pure-Python wheels published for CPython 3.12; --no-deps: their other needs are in the image
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0 megatron-core==0.16.1 webdataset==1.0.2 braceexpand==0.1.7 \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0
# source packages, made into pure-Python wheels here: DeepSpeed without its ops (JIT-built if ever used),
# mamba_ssm without its CUDA extension (its SSD kernels are Triton; selective_scan_cuda is not needed)
DS_BUILD_OPS=0 $pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $pip wheel -q --no-deps --no-build-isolation -w .whl \
  mamba-ssm==2.3.2.post1
# causal-conv1d has no CUDA-free form and no wheel for the image's torch: its source travels, and gpu.sh
# builds it there (nvcc, sm_90 only) while the other items run
CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
  $pip download -q --no-deps --no-build-isolation --no-binary=:all: -d .whl causal-conv1d==1.7.0
ls -la .whl
total=$(du -cb .whl/* | tail -1 | cut -f1)
echo ".whl: $((total / 1024 / 1024)) MiB ($total bytes); limit 64 MiB"
[ "$total" -le $((64 * 1024 * 1024)) ] || { echo "too large for the device tool" >&2; exit 1; }
