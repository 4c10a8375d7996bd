"""Kafka client settings (librdkafka and aiokafka spell them differently), topic creation and the co-partition check."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from mmcl.errors import ConfigError
from streams.settings import KafkaSettings, LimitSettings, Settings, TopicSettings

HOUR_MS = 3600 * 1000
HEADERS_ROOM = 64 * 1024  # dead-letter headers (reason, error text, source) on top of the original bytes


def librdkafka_config(k: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": k.bootstrap_servers, "security.protocol": k.security_protocol}
    if k.sasl_mechanism:
        conf["sasl.mechanism"] = k.sasl_mechanism
        conf["sasl.username"] = k.sasl_username
        conf["sasl.password"] = k.sasl_password.get_secret_value() if k.sasl_password else ""
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if getattr(k, ours):
            conf[theirs] = str(getattr(k, ours))
    return conf


def producer_config(k: KafkaSettings, linger_ms: int = 2) -> dict[str, Any]:
    # murmur2_random: the Java client's and aiokafka's (Faust's) key hash; librdkafka's default would put a call's
    # three modalities on partitions the worker does not read together.
    return {**librdkafka_config(k), "partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": linger_ms}


def produce(producer: Any, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
    """producer.produce, waiting while librdkafka's local queue is full (BufferError) instead of failing; other
    errors (KafkaException) are the caller's."""
    while True:
        try:
            producer.produce(topic, value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # let deliveries drain


def consumer_config(k: KafkaSettings, group_id: str) -> dict[str, Any]:
    return {**librdkafka_config(k), "group.id": group_id, "auto.offset.reset": "earliest",
            "session.timeout.ms": int(k.session_timeout_s * 1000), "heartbeat.interval.ms": int(k.heartbeat_interval_s * 1000),
            "fetch.wait.max.ms": k.fetch_max_wait_ms, "enable.auto.commit": False}


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
    if k.ssl_certfile:
        ctx.load_cert_chain(str(k.ssl_certfile), str(k.ssl_keyfile) if k.ssl_keyfile else None)
    return ctx


def partition_counts(k: KafkaSettings, topics: tuple[str, ...], timeout: float = 10.0) -> dict[str, int | None]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient(librdkafka_config(k)).list_topics(timeout=timeout)
    return {t: (len(md.topics[t].partitions) if t in md.topics and md.topics[t].error is None else None) for t in topics}


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(t: TopicSettings, max_message_bytes: int = LimitSettings().max_message_bytes) -> dict[str, TopicSpec]:
    """Every topic the service uses, with its partitions and topic-level configs: the one definition `mmcl up`,
    `mmcl topics create` (the compose / Kubernetes init step) and `mmcl worker --create-topics` all apply."""

    def spec(retention_h: float, message_bytes: int, policy: str = "delete") -> TopicSpec:
        return TopicSpec(t.partitions, {"cleanup.policy": policy, "retention.ms": str(int(retention_h * HOUR_MS)),
                                        "max.message.bytes": str(message_bytes)})

    part = max_message_bytes + HEADERS_ROOM  # a feature message at the size limit must fit, and reach the DLQ
    out = {name: spec(t.features_retention_h, part) for name in t.features}
    out[t.predictions] = spec(t.output_retention_h, 1024 * 1024)
    out[t.alerts] = spec(t.output_retention_h, 1024 * 1024)
    out[t.dlq] = spec(t.dlq_retention_h, part)
    out[t.feedback] = spec(t.feedback_retention_h, 1024 * 1024)
    # all of an utterance's parts in one record; compacted too, so a re-delivered utterance is kept once
    out[t.joined] = spec(t.joined_retention_h, len(t.features) * max_message_bytes + HEADERS_ROOM, "compact,delete")
    # the latest announcement is all a worker needs; one partition keeps them in order
    out[t.model_updates] = TopicSpec(1, {"cleanup.policy": "compact"})
    return out


def ensure_topics(k: KafkaSettings, t: TopicSettings, timeout: float = 15.0,
                  max_message_bytes: int = LimitSettings().max_message_bytes) -> dict[str, int | None]:
    """Create the missing topics as `topic_specs` defines them (auto-created ones would get the broker's defaults).
    Returns every topic's partition count as found (None: it was missing, and is now created as specified)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    specs = topic_specs(t, max_message_bytes)
    found = partition_counts(k, tuple(specs), timeout)
    missing = [name for name, n in found.items() if n is None]
    if missing:
        admin = AdminClient(librdkafka_config(k))  # must outlive the futures: its destruction cancels them
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=specs[name].partitions, replication_factor=t.replication,
                      config=specs[name].config) for name in missing],
            operation_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout)
            except Exception as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise ConfigError(f"could not create topic {name}: {e}") from None
    return found


def check_copartitioned(s: Settings, timeout: float = 10.0,
                        counts: dict[str, int | None] | None = None) -> int:
    """The join needs a call's three parts on the same partition number: refuse to run otherwise. `counts`: the
    feature topics' partition counts when the caller has them (else they are read from the broker)."""
    if counts is None:
        counts = partition_counts(s.kafka, s.topics.features, timeout)
    absent = [t for t, n in counts.items() if n is None]
    if absent:
        raise ConfigError(f"feature topic(s) {', '.join(absent)} do not exist on {s.kafka.bootstrap_servers} "
                          "(create them with the same partition count, or run `mmcl up`)")
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{t}={n}" for t, n in counts.items())
        raise ConfigError(f"feature topics are not co-partitioned ({shown}); the join needs the same partition count "
                          "on all three: recreate them (Kafka cannot shrink a topic)")
    return next(iter(counts.values()))  # type: ignore[return-value]
