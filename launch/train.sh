#!/usr/bin/env bash
# Launch a statex-dist training run through the deepspeed launcher.
#
#   bash launch/train.sh                         the embedded default on this machine's CPU (demo)
#   bash launch/train.sh CONFIG [key.sub=value ...]
#   bash launch/train.sh CONFIG [key.sub=value ...] --print-config    the resolved run config; starts nothing
#
# Environment:
#   NPROC=N          processes on this machine: GPUs on a GPU machine (default: all of them), gloo
#                    processes on the CPU (default: 1)
#   HOSTFILE=PATH    multi-node: a DeepSpeed hostfile ("host slots=8" per line); NUM_NODES=n picks the
#                    first n hosts. Every node needs the same repo path and .venv, passwordless ssh from
#                    this node (pdsh or ssh), and a filesystem shared by all nodes for logging.dir and
#                    checkpoint.dir. MASTER_ADDR / MASTER_PORT default to this host / 29500.
#                    NCCL: set NCCL_SOCKET_IFNAME / NCCL_IB_HCA for your fabric; DeepSpeed forwards
#                    NCCL_* and PYTHON* variables to the other nodes (see .deepspeed_env).
#   DEBUG=1          one process, no launcher (python -m statex_dist.train)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ $# -eq 0 ]; then
  exec "$PY" -m statex_dist.demo
fi
case "$1" in
  --*) exec "$PY" -m statex_dist.demo "$@" ;;
esac
for a in "$@"; do
  case "$a" in  # answered by one process, before any launcher starts
    --print-config|-h|--help) exec "$PY" -m statex_dist.train "$@" ;;
  esac
done
if [ "${DEBUG:-0}" = 1 ]; then
  exec "$PY" -m statex_dist.train "$@"
fi
DS="$(dirname "$PY")/deepspeed"
args=()
if [ -n "${HOSTFILE:-}" ]; then
  args+=(--hostfile "$HOSTFILE")
  [ -n "${NUM_NODES:-}" ] && args+=(--num_nodes "$NUM_NODES")
  [ -n "${MASTER_ADDR:-}" ] && args+=(--master_addr "$MASTER_ADDR")
  args+=(--master_port "${MASTER_PORT:-29500}")
else
  if [ -z "${NPROC:-}" ]; then
    NPROC=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")
  fi
  args+=(--num_gpus "$NPROC" --master_port "${MASTER_PORT:-29500}")
  # the run config checked once, in one line, before the launcher starts NPROC processes that would each
  # print the same error (several machines: each rank checks its own world size)
  WORLD_SIZE="$NPROC" "$PY" -m statex_dist.train "$@" --print-config > /dev/null
fi
exec "$DS" "${args[@]}" --module statex_dist.train "$@"
