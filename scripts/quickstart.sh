#!/usr/bin/env bash
# Offline training: synthetic MOSI-shaped data -> train MMCL -> test metrics vs the ideal. Writes data/synth.npz and
# runs/quickstart/ under QUICKSTART_DIR (default: the repository). Extra arguments go to `mmcl train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
out="${QUICKSTART_DIR:-.}"
.venv/bin/mmcl data synth --out "$out/data/synth.npz"
.venv/bin/mmcl train --data "$out/data/synth.npz" --out "$out/runs/quickstart" "$@"   # the defaults: quick, paper
