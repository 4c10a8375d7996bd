"""Kafka client settings (librdkafka and aiokafka spell them differently), topic creation and the co-partition check."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmcl.errors import ConfigError
from streams.errors import TransientError
from streams.settings import KafkaSettings, LimitSettings, Settings, TopicSettings

log = logging.getLogger(__name__)
HOUR_MS = 3600 * 1000
HEADERS_ROOM = 64 * 1024  # dead-letter headers (reason, error text, source) on top of the original bytes
RECORD_OVERHEAD = 512  # a record's framing in its batch (batch header 61 B, varints, header keys), with room to spare
OUTPUT_RECORD_BYTES = 1024 * 1024  # predictions, alerts, feedback labels: a few hundred bytes each


@dataclass(frozen=True)
class RecordLimits:
    """The largest record each kind of topic takes, all derived from the one input limit
    (MMCL_LIMITS__MAX_MESSAGE_BYTES): topics are created with them, producers are configured with them, and the
    worker checks every record against them (lowered to what the broker says at start-up) before sending it."""

    feature: int  # a feature message at the input limit, with its producer's headers
    dead_letter: int  # the same bytes, with our headers added
    joined: int  # all of an utterance's parts in one record
    output: int  # predictions and alerts

    @property
    def producer(self) -> int:
        """librdkafka's message.max.bytes (its default of 1,000,000 refuses records we must write)."""
        return max(self.feature, self.dead_letter, self.joined, self.output) + RECORD_OVERHEAD

    def for_topic(self, topics: TopicSettings, topic: str) -> int:
        """The largest record `topic` accepts from us."""
        if topic in topics.features:
            return self.feature
        return {topics.dlq: self.dead_letter, topics.joined: self.joined}.get(topic, self.output)

    def lowered(self, topics: TopicSettings, broker: dict[str, int]) -> RecordLimits:
        """These limits, lowered to the broker's `max.message.bytes` of the topics it reported."""
        def low(ours: int, *topics: str) -> int:
            return min([ours, *(broker[name] for name in topics if name in broker)])

        return RecordLimits(low(self.feature, *topics.features), low(self.dead_letter, topics.dlq),
                            low(self.joined, topics.joined),
                            low(self.output, topics.predictions, topics.alerts))


def record_limits(max_message_bytes: int, modalities: int = 3) -> RecordLimits:
    """The record size limits every producer, topic and check derive from the input limit."""
    part = max_message_bytes + HEADERS_ROOM  # a feature message at the size limit must fit, and reach the DLQ
    return RecordLimits(feature=part, dead_letter=part, joined=modalities * max_message_bytes + HEADERS_ROOM,
                        output=OUTPUT_RECORD_BYTES)


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> int:
    """What a record weighs against a topic's max.message.bytes when it travels alone in its batch."""
    return (len(key or b"") + len(value or b"") + sum(len(k.encode()) + len(v or b"") + 8 for k, v in headers or ())
            + RECORD_OVERHEAD)


def librdkafka_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings for a librdkafka client."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username
        conf["sasl.password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if getattr(kafka, ours):
            conf[theirs] = str(getattr(kafka, ours))
    return conf


def producer_config(kafka: KafkaSettings, max_record_bytes: int | None = None) -> dict[str, Any]:
    """`max_record_bytes`: the largest record this producer must send (librdkafka refuses more than 1,000,000 bytes
    by default, so a producer of feature messages at the input limit, or the worker's, must raise it)."""
    # murmur2_random: the Java client's and aiokafka's (Faust's) key hash; librdkafka's default would put a call's
    # three modalities on partitions the worker does not read together.
    # reconnect.backoff.max.ms: librdkafka backs off up to 10 s between attempts to reach a broker that is down, so
    # after a cluster restart a part held in this producer could reach the workers 10-20 s after the parts it
    # travelled with that were written before the outage: past the join's wait for it. 1 s bounds that delay.
    conf = {**librdkafka_config(kafka), "partitioner": "murmur2_random", "enable.idempotence": True,
            "linger.ms": kafka.linger_ms, "reconnect.backoff.max.ms": 1000}
    if max_record_bytes is not None:
        conf["message.max.bytes"] = max(1_000_000, max_record_bytes + RECORD_OVERHEAD)
    return conf


def produce(producer: Any, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
    """producer.produce, waiting while librdkafka's local queue is full (BufferError) instead of failing; other
    errors (KafkaException) are the caller's."""
    while True:
        try:
            producer.produce(topic, value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # let deliveries drain


def consumer_config(kafka: KafkaSettings, group_id: str) -> dict[str, Any]:
    """A librdkafka consumer that commits only what it is told to."""
    return {**librdkafka_config(kafka), "group.id": group_id, "auto.offset.reset": "earliest",
            "session.timeout.ms": int(kafka.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(kafka.heartbeat_interval_s * 1000),
            "fetch.wait.max.ms": kafka.fetch_max_wait_ms, "enable.auto.commit": False}


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for aiokafka (Faust), or None for plaintext."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.ssl_certfile:
        ctx.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return ctx


def admin_client(kafka: KafkaSettings, errors: list[Any] | None = None) -> Any:
    """An admin client for the start-up checks. Its own log stays quiet below critical: a failure reaches the user
    as our one-line error, not as librdkafka's connection log besides it. `errors` collects the client-level errors
    librdkafka reports (served by poll)."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {**librdkafka_config(kafka), "log_level": 2, "allow.auto.create.topics": False}
    if errors is not None:
        conf["error_cb"] = errors.append
    # a metadata request for a topic by name creates it with the broker's defaults on a broker that auto-creates
    # topics (Apache Kafka's default), and librdkafka lets a non-consumer ask for that unless told not to
    return AdminClient(conf)


def partition_counts(kafka: KafkaSettings, topics: tuple[str, ...], timeout: float = 10.0) -> dict[str, int | None]:
    """Each topic's partition count from the broker's metadata (None: no such topic). A TransientError when the
    broker does not answer; a ConfigError when it refuses our login, or says we may not see a topic."""
    errors: list[Any] = []
    return _read_counts(admin_client(kafka, errors), errors, kafka, topics, timeout)


def _read_counts(admin: Any, errors: list[Any], kafka: KafkaSettings, topics: tuple[str, ...],
                 timeout: float) -> dict[str, int | None]:
    from confluent_kafka import KafkaError, KafkaException

    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as e:
        admin.poll(0)  # serves the error callbacks
        refused = [err for err in errors if err.code() == KafkaError._AUTHENTICATION]
        if refused:  # a wrong password is not a broker that does not answer, and waiting will not mend it
            who = f" of user {kafka.sasl_username}" if kafka.sasl_username else ""
            raise ConfigError(f"the broker at {kafka.bootstrap_servers} refused the login{who} "
                              f"({refused[-1].str()})") from None
        raise TransientError(f"the broker at {kafka.bootstrap_servers} did not answer within {timeout:g} s "
                             f"({e.args[0].str() if e.args else e})") from None
    counts = {t: (len(md.topics[t].partitions) if t in md.topics and md.topics[t].error is None else None) for t in topics}
    unseen = [t for t, n in counts.items() if n is None]
    if unseen:
        check_authorized(admin, kafka, unseen, timeout)
    return counts


def check_authorized(admin: Any, kafka: KafkaSettings, topics: list[str], timeout: float) -> None:
    """A listing of all topics leaves out those the user may not describe, so they look absent: ask for each by name,
    and refuse (one line) when the broker says the user is not authorized."""
    from confluent_kafka import KafkaError, KafkaException

    denied = []
    for topic in topics:
        try:
            md = admin.list_topics(topic=topic, timeout=timeout)
        except KafkaException:
            continue  # no clearer answer: the caller reports the topic as absent
        err = md.topics[topic].error if topic in md.topics else None
        if err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            denied.append(topic)
    if denied:
        who = f"user {kafka.sasl_username}" if kafka.sasl_username else "this client"
        raise ConfigError(f"{who} is not authorized to describe topic(s) {', '.join(denied)} on "
                          f"{kafka.bootstrap_servers}: grant its principal DESCRIBE and READ on the feature topics, and "
                          "WRITE on the topics it publishes")


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: its partitions and its configs."""

    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(topics: TopicSettings, max_message_bytes: int = LimitSettings().max_message_bytes) -> dict[str, TopicSpec]:
    """Every topic the service uses, with its partitions and topic-level configs: the one definition `mmcl up`,
    `mmcl topics create` (the compose / Kubernetes init step) and `mmcl worker --create-topics` all apply."""

    durability = {"min.insync.replicas": str(topics.min_in_sync)}

    def spec(retention_h: float, message_bytes: int, policy: str = "delete") -> TopicSpec:
        return TopicSpec(topics.partitions, {"cleanup.policy": policy, "retention.ms": str(int(retention_h * HOUR_MS)),
                                        "max.message.bytes": str(message_bytes), **durability})


    lim = record_limits(max_message_bytes, len(topics.features))
    out = {name: spec(topics.features_retention_h, lim.feature) for name in topics.features}
    out[topics.predictions] = spec(topics.output_retention_h, lim.output)
    out[topics.alerts] = spec(topics.output_retention_h, lim.output)
    out[topics.dlq] = spec(topics.dlq_retention_h, lim.dead_letter)
    out[topics.feedback] = spec(topics.feedback_retention_h, lim.output)
    # all of an utterance's parts in one record; compacted too, so a re-delivered utterance is kept once
    out[topics.joined] = spec(topics.joined_retention_h, lim.joined, "compact,delete")
    # the latest announcement is all a worker needs; one partition keeps them in order
    out[topics.model_updates] = TopicSpec(1, {"cleanup.policy": "compact", **durability})
    return out


def ensure_topics(kafka: KafkaSettings, topics: TopicSettings, timeout: float = 15.0,
                  max_message_bytes: int = LimitSettings().max_message_bytes) -> dict[str, int | None]:
    """Create the missing topics as `topic_specs` defines them (auto-created ones would get the broker's defaults).
    Returns every topic's partition count as found (None: it was missing, and is now created as specified)."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # exported at run time; the package's stub does not re-export it

    specs = topic_specs(topics, max_message_bytes)
    found = partition_counts(kafka, tuple(specs), timeout)
    missing = [name for name, n in found.items() if n is None]
    if missing:
        admin = admin_client(kafka)  # must outlive the futures: its destruction cancels them
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=specs[name].partitions, replication_factor=topics.replication,
                      config=specs[name].config) for name in missing],
            operation_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout)
            except Exception as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise ConfigError(f"could not create topic {name}: {e}") from None
        settled_counts(kafka, tuple(missing), lambda counts: all(counts[n] == specs[n].partitions for n in missing),
                       timeout)
    return found


def settled_counts(kafka: KafkaSettings, topics: tuple[str, ...], settled: Callable[[dict[str, int | None]], bool],
                   within_s: float, timeout: float = 10.0) -> dict[str, int | None]:
    """partition_counts, read again until `settled` holds or within_s has passed (-> the last reading). The controller
    acknowledges a new topic before every broker has it: for a moment a broker's metadata lacks the topic, or shows
    only some of its partitions."""
    end = time.monotonic() + within_s
    errors: list[Any] = []
    admin = admin_client(kafka, errors)  # one client for every reading: each new one connects again
    while True:
        counts = _read_counts(admin, errors, kafka, topics, timeout)
        if settled(counts) or time.monotonic() >= end:
            return counts
        time.sleep(0.25)


def check_copartitioned(settings: Settings, timeout: float = 10.0,
                        counts: dict[str, int | None] | None = None) -> int:
    """The join needs a call's three parts on the same partition number: refuse to run otherwise. `counts`: the
    feature topics' partition counts when the caller has them (else they are read from the broker)."""
    if counts is None:
        counts = partition_counts(settings.kafka, settings.topics.features, timeout)
    absent = [t for t, n in counts.items() if n is None]
    if absent:
        raise ConfigError(f"feature topic(s) {', '.join(absent)} do not exist on {settings.kafka.bootstrap_servers} "
                          "(create them with the same partition count, or run `mmcl up`)")
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{t}={n}" for t, n in counts.items())
        raise ConfigError(f"feature topics are not co-partitioned ({shown}); the join needs the same partition count "
                          "on all three: recreate them (Kafka cannot shrink a topic)")
    return next(n for n in counts.values() if n is not None)


def output_topics(settings: Settings) -> tuple[str, ...]:
    """The topics the worker writes to."""
    t = settings.topics
    return (t.predictions, t.alerts, t.dlq, *([t.joined] if settings.trainer.keep_joined else []))


def check_outputs(settings: Settings, counts: dict[str, int | None], timeout: float = 10.0) -> RecordLimits:
    """At start-up: the topics the worker writes exist (`counts`: their partition counts, as partition_counts read
    them), and the records it may write fit them. Returns the record limits to check outputs against: ours, lowered
    where the broker's `max.message.bytes` of a topic is smaller (a record bound to be refused is then handled
    before it is sent, with the reason known)."""
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]  # exported at run time; the package's stub does not re-export it

    t = settings.topics
    outputs = output_topics(settings)
    absent = [name for name in outputs if counts.get(name) is None]
    if absent:
        raise ConfigError(f"output topic(s) {', '.join(absent)} do not exist on {settings.kafka.bootstrap_servers} "
                          "(mmcl topics create, or mmcl worker --create-topics)")
    ours = record_limits(settings.limits.max_message_bytes, len(t.features))
    admin = admin_client(settings.kafka)
    broker: dict[str, int] = {}
    try:
        futures = admin.describe_configs([ConfigResource("topic", name) for name in outputs])
        for res, fut in futures.items():
            entry = fut.result(timeout).get("max.message.bytes")
            if entry is not None and entry.value is not None and str(entry.value).isdigit():
                broker[res.name] = int(entry.value)
    except Exception as e:  # a broker without DescribeConfigs: our limits stand, and a refusal is still handled
        log.info("could not read the output topics' max.message.bytes (%s); checking records against our limits", e)
    lowered = ours.lowered(t, broker)
    for name, has in broker.items():
        need = ours.for_topic(t, name)
        if has < need:
            what = {t.dlq: "dead letters of larger messages are truncated to fit",
                    t.joined: "larger utterances are scored but not kept for training"}.get(name, "larger records are skipped")
            log.warning("topic %s takes records up to %d bytes, below the %d that MMCL_LIMITS__MAX_MESSAGE_BYTES=%d needs: "
                        "%s (raise it: kafka-configs --alter --entity-type topics --entity-name %s "
                        "--add-config max.message.bytes=%d)", name, has, need, settings.limits.max_message_bytes, what, name,
                        need)
    return lowered
