#!/usr/bin/env bash
# Lint and type-check, then the whole test suite (unit, integration on the embedded broker and Redis and on Apache
# Kafka, extractors on real media, end to end, deployment files); what CI runs. Installs every extractor extra,
# espeak-ng (Debian) for the test speech, Prometheus with promtool (Debian) for the monitoring tests, and Java 17 and
# Maven (Debian) with Apache Kafka's jars (Maven Central, cached outside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pip install --quiet -e ".[test]"
bash scripts/install_extractors.sh glove opensmile asr
apt_install() {  # command, Debian package
  command -v "$1" >/dev/null 2>&1 && return 0
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends "$2" >/dev/null ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends "$2" >/dev/null; }
}
apt_install espeak-ng espeak-ng
apt_install promtool prometheus
apt_install java openjdk-17-jre-headless  # Apache Kafka's broker, run from its jars (scripts/kafka.sh)
apt_install mvn maven                     # fetches those jars from Maven Central, once
bash scripts/kafka.sh fetch >/dev/null
.venv/bin/ruff check .
.venv/bin/mypy  # the files and strictness are in pyproject.toml
.venv/bin/python -m pytest "$@"
