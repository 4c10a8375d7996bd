#!/usr/bin/env bash
# Lint, then the whole test suite (unit + end-to-end CLI); what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
