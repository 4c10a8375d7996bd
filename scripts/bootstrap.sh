#!/usr/bin/env bash
# Creates .venv (if missing) and installs mmcl-stream with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned. From PyPI that is the CUDA build (several GB; it runs on a CPU too). TORCH_INDEX_URL names
# an index to take it from instead, e.g. a CPU-only one (https://download.pytorch.org/whl/cpu) or a mirror of it.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/python -m pip install --quiet --index-url "$TORCH_INDEX_URL" "torch==2.13.0"
else
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
