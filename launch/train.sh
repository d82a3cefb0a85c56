#!/usr/bin/env bash
# Launch a statex-dist training run through the deepspeed launcher.
#
#   bash launch/train.sh                         the embedded default on this machine's CPU (demo)
#   bash launch/train.sh CONFIG [key.sub=value ...]
#   bash launch/train.sh CONFIG [key.sub=value ...] --print-config    the resolved run config; starts nothing
#
# Environment:
#   NPROC=N          processes on this machine: GPUs on a GPU machine (default: all of them), gloo
#                    processes on the CPU (default: 1); parallel.device=auto|cuda|cpu picks which
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
# DeepSpeed's launcher as a module of $PY: the `deepspeed` script is absent where the packages were installed
# with --target (benchmarks/gpu.sh) and the same code runs either way
DS=("$PY" -m deepspeed.launcher.runner)
args=()
if [ -n "${HOSTFILE:-}" ]; then
  args+=(--hostfile "$HOSTFILE")
  [ -n "${NUM_NODES:-}" ] && args+=(--num_nodes "$NUM_NODES")
  [ -n "${MASTER_ADDR:-}" ] && args+=(--master_addr "$MASTER_ADDR")
  args+=(--master_port "${MASTER_PORT:-29500}")
else
  # every check that needs no peers (device, kernels, source, shards, layout, resume point) once, in one
  # line, before the launcher starts processes that would each print the same error; it answers the
  # process count: NPROC, else one per GPU of parallel.device (several machines: each rank checks its own)
  NPROC=$(env -u WORLD_SIZE ${NPROC:+WORLD_SIZE="$NPROC"} "$PY" -m statex_dist.train "$@" --preflight | tail -n 1)
  args+=(--num_gpus "$NPROC" --master_port "${MASTER_PORT:-29500}")
fi
exec "${DS[@]}" "${args[@]}" --module statex_dist.train "$@"
