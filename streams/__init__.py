"""The mmcl-stream service: Faust worker, join, batched inference, Redis/Kafka sinks, metrics, embedded runtime."""
