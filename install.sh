#!/usr/bin/env bash
# Creates .venv/ at the repo root and installs statex-dist editable, with torch pinned for every pip call.
# Usage: bash install.sh            (CPU or CUDA machine)
#        STATEX_CUDA_EXTRAS=1 bash install.sh   (builds mamba-ssm's and causal-conv1d's CUDA extensions; needs nvcc)
#        TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash install.sh   (a torch build for an older
#                                                   driver: the cuXYZ at or below the CUDA version nvidia-smi shows)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# DeepSpeed ships as a source package; its setup imports torch, so build it against the venv's torch.
DS_BUILD_OPS=0 $pip install -q --no-build-isolation -r requirements.txt
$pip install -q --no-build-isolation --no-deps -e .
# mamba_ssm and causal-conv1d (see requirements-cuda.txt): without their CUDA extensions unless asked
skip=TRUE
[ "${STATEX_CUDA_EXTRAS:-0}" = 1 ] && skip=FALSE
MAMBA_SKIP_CUDA_BUILD=$skip CAUSAL_CONV1D_SKIP_CUDA_BUILD=$skip MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
  $pip install -q --no-build-isolation --no-deps -r requirements-cuda.txt
.venv/bin/python -c "import torch, deepspeed, megatron.core, fla, webdataset, statex_dist, importlib.util as u; \
assert u.find_spec('mamba_ssm') and u.find_spec('causal_conv1d'); \
print('statex-dist installed: torch', torch.__version__, '| deepspeed', deepspeed.__version__)"
# which device runs will use, or why this machine's GPUs cannot be used by the installed torch
.venv/bin/python -c "from statex_dist.parallel.device import install_report; print(install_report())"
