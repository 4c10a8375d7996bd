"""The worker on Apache Kafka 4.1.0 (from Maven Central, run from its jars) with the production client defaults:
every utterance scored once, offsets committed to the end, and the topic configs we write applied by the broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.kafka import ensure_topics, topic_specs
from streams.local import simulate
from streams.local.embedded import Service
from streams.settings import KafkaSettings, Settings

from .conftest import Stack, wait_for
from .test_delivery import SPLIT, assert_counted_once, results_complete

# Apache Kafka's own defaults, which the worker ships with (the suite's other tests use quicker ones)
PRODUCTION_TIMINGS = {f"MMCL_KAFKA__{name.upper()}": str(getattr(KafkaSettings(), name))
                      for name in ("session_timeout_s", "heartbeat_interval_s", "fetch_max_wait_ms")}


@pytest.fixture
def apache_stack(kafka: Service, redis_service: Service, checkpoint: Path, state_dir: Path) -> Iterator[Stack]:
    st = Stack(kafka, redis_service, checkpoint, state_dir, f"ak{uuid.uuid4().hex[:6]}")
    ensure_topics(KafkaSettings(bootstrap_servers=kafka.url), st.topics)
    yield st
    for worker in st.workers:
        worker.stop()


@pytest.mark.timeout(240)  # a JVM broker's start, and a group join with Kafka's own timings
def test_round_trip_on_apache_kafka_with_production_timings(apache_stack: Stack) -> None:
    st = apache_stack
    worker = st.start_worker(**PRODUCTION_TIMINGS)
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=st.kafka.url), topics=st.topics)
    spec = simulate.SimSpec(calls=4, rate=60, limit=80, jitter_ms=50, run_id=f"{st.prefix}-", seed=3)
    stats = simulate.run(settings, SPLIT, spec)
    assert stats.errors == 0 and stats.utterances == 80
    wait_for(lambda: results_complete(st, stats), 90, "every result in Redis")
    assert_counted_once(st, stats)
    assert len(st.consume_all(st.topics.predictions, 80, timeout=30)) == 80
    assert worker.metric("mmcl_dead_letters_total") == 0
    tps = [TopicPartition(topic, p) for topic in st.topics.features for p in range(st.topics.partitions)]
    probe = Consumer({"bootstrap.servers": st.kafka.url, "group.id": f"{st.prefix}-workers", "enable.auto.commit": False})
    try:  # Apache Kafka's high watermarks are exact (the embedded broker's trail the log end)
        assert sum(probe.get_watermark_offsets(tp, timeout=10)[1] for tp in tps) == stats.messages
    finally:
        probe.close()
    wait_for(lambda: st.committed_to_the_end(f"{st.prefix}-workers"), 30,
             "offsets committed to the end of every feature partition", every=0.5)
    # /healthz shows the consumer's view of each partition it owns: here, every one read to its end
    seen = worker.status()["consumer"]
    assert sorted(seen) == sorted(f"{tp.topic}:{tp.partition}" for tp in tps)
    assert all(v["position"] == v["highwater"] and v["leader"] == 1 and not v["paused"] for v in seen.values()), seen
    assert sum(v["highwater"] for v in seen.values()) == stats.messages
    assert worker.metric("mmcl_rebalances_total") >= 1


def test_the_broker_applies_the_topic_configs_we_write(apache_stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": apache_stack.kafka.url})
    specs = topic_specs(apache_stack.topics)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in specs]
    for res, fut in admin.describe_configs(resources).items():
        applied = {k: v.value for k, v in fut.result(15).items()}
        for key, value in specs[res.name].config.items():
            assert applied[key] == value, (res.name, key)


@pytest.mark.timeout(240)  # a JVM broker's start, and a group join with Kafka's own timings
def test_records_the_broker_refuses_for_their_size_are_skipped_one_by_one(apache_stack: Stack) -> None:
    """Apache Kafka enforces a topic's max.message.bytes (the embedded broker has no limit at all). Lowered after the
    worker's start-up check, the joined topic refuses every joined record at the broker: each one is counted and
    skipped alone, while its utterance's result is written and published and the partitions go on."""
    st = apache_stack
    worker = st.start_worker(**PRODUCTION_TIMINGS)
    st.set_topic_config(st.topics.joined, "max.message.bytes", "400")
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=st.kafka.url), topics=st.topics)
    spec = simulate.SimSpec(calls=4, rate=40, limit=30, jitter_ms=50, run_id=f"{st.prefix}-big-", seed=5)
    stats = simulate.run(settings, SPLIT, spec)
    wait_for(lambda: results_complete(st, stats), 90, "every result in Redis")
    assert_counted_once(st, stats)
    wait_for(lambda: worker.metric("mmcl_records_refused_total", output="joined", why="too_large") == 30, 30,
             "every joined record refused by the broker, and counted")
    assert len(st.consume_all(st.topics.predictions, 30, timeout=30)) == 30
    assert st.consume_all(st.topics.joined, None, timeout=5) == []
    assert worker.metric("mmcl_dead_letters_total") == 0
    assert worker.status().get("ready") is True  # nothing stalled: the worker still takes messages


def held(st: Stack, topic: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record partition 0 of a topic holds now, in offset order."""
    return [(m.key(), m.value()) for m in st.consume_all(topic, None, timeout=10) if m.partition() == 0]


def test_compaction_and_retention_of_our_topics_on_the_broker(apache_stack: Stack) -> None:
    """The model-updates topic (compacted) keeps the latest announcement per key, the joined topic (compacted and
    deleted) keeps one record per utterance and drops records past their retention, as the broker applies them.
    Segments are made to roll at once so the cleaner gets to them in seconds rather than days."""
    from confluent_kafka import Producer

    st = apache_stack
    updates, joined = st.topics.model_updates, st.topics.joined
    for topic in (updates, joined):
        st.set_topic_config(topic, "segment.ms", "100")
        st.set_topic_config(topic, "min.cleanable.dirty.ratio", "0.01")
    p = Producer({"bootstrap.servers": st.kafka.url, "linger.ms": 0})

    def send(topic: str, key: bytes, value: bytes, partition: int = 0) -> None:
        p.produce(topic, value, key=key, partition=partition)
        p.flush(10)

    for version in (b"v1", b"v2", b"v3"):
        send(updates, b"current", version)
        send(joined, b"utt-1", version)
    send(updates, b"rollback", b"r1")

    def compacted() -> bool:
        send(updates, b"tick", b"t")  # rolls the active segment so the cleaner can take the one before
        send(joined, b"tick", b"t")
        records = held(st, updates)
        latest = dict(records)
        return [v for k, v in records if k == b"current"] == [b"v3"] and latest[b"rollback"] == b"r1" and \
            [v for k, v in held(st, joined) if k == b"utt-1"] == [b"v3"]

    wait_for(compacted, 60, "the broker compacting both topics to the latest record per key", every=0.5)

    st.set_topic_config(joined, "retention.ms", "1000")  # then every joined record is past its retention

    def expired() -> bool:
        send(joined, b"tick", b"t")
        return not [k for k, _ in held(st, joined) if k == b"utt-1"]

    wait_for(expired, 60, "the broker deleting joined records past their retention", every=0.5)
