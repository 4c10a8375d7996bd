#!/usr/bin/env bash
# The main job until the streaming demo lands: synthetic MOSI-shaped data -> train MMCL -> test metrics vs ideal.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/mmcl data synth --out data/synth.npz
.venv/bin/mmcl train --data data/synth.npz --preset quick --decoupling calibrated --out runs/quickstart "$@"
