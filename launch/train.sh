#!/usr/bin/env bash
# Entry point of the main job. With no arguments: the embedded default on this machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m statex_dist.demo "$@"
