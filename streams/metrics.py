"""Prometheus metrics (prefix mmcl_, base units, no per-call labels) on a registry owned by the worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.consumed = Counter("mmcl_messages_consumed", "Feature messages consumed", ["modality"], registry=r)
        self.dead_letters = Counter("mmcl_dead_letters", "Messages sent to the dead-letter topic", ["reason", "stage"],
                                    registry=r)
        self.join_outcomes = Counter("mmcl_join_outcomes", "Join outcomes: complete, partial, incomplete, late, "
                                     "duplicate, redelivered", ["outcome"], registry=r)
        self.clock_skew = Counter("mmcl_clock_skew_parts", "Parts whose producer clock was off its partition's consensus "
                                  "(or ahead of the worker's) by more than the allowed skew, corrected for the join",
                                  ["modality", "direction"], registry=r)
        self.records_refused = Counter("mmcl_records_refused", "Output records a sink refused for good (too large, "
                                       "invalid, unauthorized), each handled alone", ["output", "why"], registry=r)
        self.dead_letters_truncated = Counter("mmcl_dead_letters_truncated", "Dead letters cut to fit the dead-letter "
                                              "topic (original size and SHA-256 in their headers)", registry=r)
        self.policy_masked = Counter("mmcl_policy_masked", "Parts ignored by the speaker-role policy",
                                     ["role", "modality"], registry=r)
        self.parts_unused = Counter("mmcl_parts_unused", "Parts of a modality the serving model does not read, "
                                    "acknowledged without decoding", ["modality"], registry=r)
        self.pending_joins = Gauge("mmcl_pending_joins", "Utterances waiting for more parts", registry=r)
        self.join_wait = Histogram("mmcl_join_wait_seconds", "First part -> utterance emitted", buckets=LATENCY_BUCKETS,
                                   registry=r)
        self.inflight = Gauge("mmcl_inflight_utterances", "Utterances queued, in the model or being written", registry=r)
        self.batch_size = Histogram("mmcl_batch_size", "Utterances per inference batch", buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram("mmcl_inference_seconds", "Model time per batch", buckets=FAST_BUCKETS,
                                           registry=r)
        self.e2e_latency = Histogram("mmcl_end_to_end_latency_seconds", "Last part produced -> result written to Redis",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("mmcl_predictions", "Predictions written", ["label", "speaker"], registry=r)
        self.duplicates_skipped = Counter("mmcl_redelivered_utterances", "Results Redis already had (re-delivery)",
                                          registry=r)
        self.redis_errors = Counter("mmcl_redis_errors", "Failed Redis writes (each is retried)", registry=r)
        self.redis_write_seconds = Histogram("mmcl_redis_write_seconds", "One pipeline per batch", buckets=FAST_BUCKETS,
                                             registry=r)
        self.kafka_errors = Counter("mmcl_kafka_produce_errors", "Failed Kafka publishes (each is retried)", registry=r)
        self.rebalances = Counter("mmcl_rebalances", "Partition assignments this worker received (one per rebalance "
                                  "it took part in)", registry=r)
        self.paused = Gauge("mmcl_consumption_paused", "1 while writes fail and consumption waits", registry=r)
        self.alerts = Counter("mmcl_alerts", "Alerts raised", ["speaker"], registry=r)
        self.model_info = Info("mmcl_model", "The model serving predictions", registry=r)
        self.model_swaps = Counter("mmcl_model_swaps", "Model swaps by result", ["result"], registry=r)
        self.last_event = Gauge("mmcl_last_event_timestamp_seconds", "Last message consumed, per topic", ["topic"],
                                registry=r)
        self.consumer_lag = Gauge("mmcl_consumer_lag", "Log end offset minus the group's committed offset, for the "
                                  "partitions this worker owns", ["topic", "partition"], registry=r)
        self.end_offset = Gauge("mmcl_log_end_offset", "Log end offset of the partitions this worker owns (input growth)",
                                ["topic", "partition"], registry=r)
        self.ready = Gauge("mmcl_ready", "1 when the worker is serving (model loaded, partitions assigned, Redis up)",
                           registry=r)
