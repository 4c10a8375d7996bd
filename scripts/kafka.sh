#!/usr/bin/env bash
# Apache Kafka 4.1.0 from Maven Central, run from its jars (Java 17 and Maven needed):
#   bash scripts/kafka.sh fetch        resolve the broker's jars once, into $KAFKA_JARS_DIR (default ~/.cache/mmcl-stream)
#   bash scripts/kafka.sh start DIR    a KRaft broker + controller with its log in DIR, on a free port; prints host:port
#   bash scripts/kafka.sh stop DIR     stop it (controlled shutdown, then SIGKILL after a grace time)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
exec .venv/bin/python -m streams.local.apache_kafka "$@"
