"""mmcl-stream's service: the only package that knows Kafka, Redis and Prometheus.

Shared modules at this level (settings, messages, schemas, kafka, metrics, health, errors); packages by concern:
sinks/, worker/, learning/, local/ (development runtime), cli/ (the `mmcl` command). docs/architecture.md has the map.
"""
