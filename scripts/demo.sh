#!/usr/bin/env bash
# The main job: embedded Kafka-protocol broker + Redis, a small MMCL trained on synthetic data (once), the worker,
# a simulated call center, and a live view of the results until Ctrl-C. Extra arguments go to `mmcl demo`
# (e.g. --duration 60, --rate 40, --calls 12, --checkpoint runs/quickstart/best).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/mmcl demo "$@"
