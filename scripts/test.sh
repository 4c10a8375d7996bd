#!/usr/bin/env bash
# Lint, then the whole test suite (unit, integration on the embedded broker and Redis, extractors on real media,
# end to end); what CI runs. Installs every extractor extra, and espeak-ng (Debian) for the test speech.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pip install --quiet -e ".[test]"
bash scripts/install_extractors.sh glove opensmile asr
if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q espeak-ng >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q espeak-ng >/dev/null; }
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
