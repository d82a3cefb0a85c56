#!/usr/bin/env bash
# The prepared check for one lent GPU (6 minutes in all, builds included, so that a 15-minute lease leaves room
# to rerun it): one PASS / FAIL / SKIP line per item and a summary (benchmarks/gpu_bench.py says what each item
# checks; one that would not fit in the time left is skipped with the reason); the log goes to $OUT when set,
# else /tmp.
#   here, once:   bash benchmarks/gpu_wheels.sh        (fills .whl/: what the GPU image lacks, 9 MiB)
#   on the GPU:   bash benchmarks/gpu.sh               (the device tool: carry [".whl"])
#   CPU rehearsal: bash benchmarks/gpu.sh              (CUDA items "skipped: no GPU", the rest run)
set -uo pipefail
cd "$(dirname "$0")/.."
export STATEX_GPU_CHECK_START=$(date +%s.%N)   # gpu_bench.py's budget counts from here
LOG_DIR=${OUT:-/tmp}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
has() { $PY -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "$@"; }
if ! has deepspeed fla megatron.core webdataset mamba_ssm pydantic; then
  [ -d .whl ] || { echo "FAIL install: packages missing and no .whl/ (run benchmarks/gpu_wheels.sh here)"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "FAIL install: pip could not install .whl/"; exit 1; }
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: CPU rehearsal"
# causal_conv1d's CUDA extension builds meanwhile (for this GPU only); the conv items wait for it
conv_src=$(ls .whl/causal_conv1d-*.tar.gz 2>/dev/null | head -1)
if [ -n "$conv_src" ] && $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  MAX_JOBS=16 timeout 280 $PY benchmarks/gpu_bench.py --build-conv "$conv_src" >"$LOG_DIR/conv_build.log" 2>&1 &
fi
timeout 355 $PY benchmarks/gpu_bench.py --budget 345 "$@" 2>"$LOG_DIR/gpu_bench.err" | tee "$LOG_DIR/gpu_bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "FAIL timeout: the check ran past 6 minutes" | tee -a "$LOG_DIR/gpu_bench.log"
exit "$rc"
